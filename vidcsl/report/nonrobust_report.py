"""The report of ``vidcsl nonrobust``: the source x target matrix of clean and robust accuracy on the real
test split, as Markdown, CSV and heat-map PNGs, with the sources' robustness and the sanity lines.

Input is the result dict ``vidcsl.robustness.nonrobust_matrix.run_matrix`` writes as ``nonrobust.json``.
The reference figures quoted are Ilyas et al.'s (2019, CIFAR-10, ResNet-50; docs/nonrobust.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vidcsl.report.tables import fmt, markdown_table, write_csv_rows

PAPER = {"det": 0.44, "rand": 0.63}  # Ilyas et al. 2019, CIFAR-10 clean test accuracy of SL on D_det / D_rand
PAPER_LINE = ("Ilyas et al. (2019) report, on CIFAR-10 at paper scale (ResNet-50, the whole training set, 1000 "
              "matching steps, full training schedule), about 63% clean test accuracy from D_rand and 44% from "
              "D_det; 84% clean / 48% robust (L2 0.25) from the robust set D_R; 88% clean / 0% robust from the "
              "non-robust set D_NR.")


def row_label(st: dict[str, Any]) -> str:
    return f"{st['label']} <- {st['source']}"


def matrices(result: dict[str, Any]) -> tuple[list[str], list[str], list[list], list[list]]:
    """(row labels, targets, clean[row][target], robust[row][target]); None where a cell is missing."""
    rows = [row_label(s) for s in result["sets"]]
    targets = list(result["targets"])
    cell = {(c["set"], c["target"]): c for c in result["cells"]}
    clean = [[cell.get((s["key"], t), {}).get("clean_acc") for t in targets] for s in result["sets"]]
    robust = [[cell.get((s["key"], t), {}).get("robust_acc") for t in targets] for s in result["sets"]]
    return rows, targets, clean, robust


def sanity_lines(result: dict[str, Any]) -> list[str]:
    """One line per D_det / D_rand set: its own paradigm's clean test accuracy vs chance, and vs the paper."""
    lines = []
    for s in result["sanity"]:
        kind = "det" if s["set"].startswith("det_") else "rand"
        if "missing" in s:
            lines.append(f"- {s['label']} from {s['source']}: not checked, {s['missing']}.")
            continue
        verdict = "clearly above chance" if s["clearly_above"] else "NOT clearly above chance"
        paper = PAPER[kind]
        reach = ("reaches" if s["acc"] >= paper else "does not reach") + \
            f" the ~{paper:.0%} Ilyas et al. report for {s['label']} on CIFAR-10 at paper scale"
        lines.append(f"- {s['label']} from {s['source']} ({s['paradigm']} trained on it): clean test accuracy "
                     f"{s['acc']:.3f} vs chance {s['chance']:.3f} (+3 s.e. = {s['bar']:.3f} on {result['n_test']} "
                     f"test samples): {verdict}; this budget {reach}.")
    if not lines:
        lines.append("- no D_det / D_rand set was built (sets without det, rand).")
    return lines


def write_nonrobust_report(result: dict[str, Any], out: str | Path) -> Path:
    """Write report.md, matrix.csv (long), matrix_clean.csv, matrix_robust.csv and the two heat-maps."""
    from vidcsl.report.heatmap import plot_heatmap

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, targets, clean, robust = matrices(result)
    ev = result["eval"]["label"]
    write_csv_rows(out / "matrix_clean.csv", ["set", *targets], [[r, *v] for r, v in zip(rows, clean)])
    write_csv_rows(out / "matrix_robust.csv", ["set", *targets], [[r, *v] for r, v in zip(rows, robust)])
    write_csv_rows(out / "matrix.csv", ["set", "kind", "source", "target", "clean_acc", "robust_acc"],
                   [[c["set"], next(s["kind"] for s in result["sets"] if s["key"] == c["set"]),
                     next(s["source"] for s in result["sets"] if s["key"] == c["set"]), c["target"],
                     c["clean_acc"], c["robust_acc"]] for c in result["cells"]])
    chance = 1.0 / result["num_classes"]
    pngs = []
    if rows:
        pngs.append(plot_heatmap(clean, rows, targets, out / "heatmap_clean.png", reference=chance,
                                 title="clean accuracy on the real test split"))
        pngs.append(plot_heatmap(robust, rows, targets, out / "heatmap_robust.png", reference=chance,
                                 title=f"robust accuracy ({ev})"))
    st = result["settings"]
    nr_ball = "unconstrained, as Ilyas et al." if st["nr_eps"] is None else f"within L2 {st['nr_eps']:g}"
    src_rows = [[s["name"], s["method"], "robust (D_R)" if s["robust_source"] else "standard (D_NR, D_det, D_rand)",
                 s["clean_acc"], s["robust_acc"], s["how"]] for s in result["sources"]]
    set_rows = [[row_label(s), s["provenance"].get("num_samples"), s["provenance"].get("mean_l2_to_start"),
                 s["provenance"].get("target_hit_rate"), s["provenance"].get("label_changed"),
                 "reused" if s["provenance"].get("reused") else "built"] for s in result["sets"]]
    lines = [
        f"# Robust and non-robust feature datasets: {result['name']}", "",
        "Ilyas et al. (2019)'s datasets, built from each source and learned by each target paradigm (Li et al. "
        "2023); protocol in docs/nonrobust.md. Every number is measured on the REAL test split "
        f"({result['n_test']} samples of {result['dataset']}, {result['num_classes']} classes, chance "
        f"{chance:.3f}); robust accuracy is PGD-{result['eval']['steps']} at {ev}. Numbers as measured at this "
        "budget, nothing more.", "",
        f"Sets from {st['n_train']} real training images each: D_R / D_NR {st['match_steps']} matching steps of "
        f"{st['match_step_size']:g} (D_NR {nr_ball}); D_det / D_rand targeted L2 PGD "
        f"{st['attack_steps']} x {st['attack_step_size']:g} within {st['attack_eps']:g}. Targets trained with one "
        "shared recipe" + ('' if st['epochs'] is None else f" ({st['epochs']} epochs)") + "; non-SL targets "
        "read out by a linear probe fitted on the same synthetic set (epoch chosen on the real validation split).",
        "", "## Sources", "",
        markdown_table(["source", "method", "role", "clean acc", f"robust acc ({ev})", "run"], src_rows), "",
        "## Synthetic sets", "",
        markdown_table(["set <- source", "samples", "mean L2 from its starting image", "attack hit rate",
                        "label changed", "cache"], set_rows), "",
        "## Clean accuracy on the real test split (usefulness)", "",
        markdown_table(["set <- source", *targets], [[r, *v] for r, v in zip(rows, clean)]), "",
        f"## Robust accuracy on the real test split ({ev})", "",
        markdown_table(["set <- source", *targets], [[r, *v] for r, v in zip(rows, robust)]), "",
        "## Sanity: non-robust features suffice", "", *sanity_lines(result), "", PAPER_LINE, "",
    ]
    if result["notes"]:
        lines += ["## Notes", "", *[f"- {n}" for n in result["notes"]], ""]
    if pngs:
        lines += ["## Heat-maps", "", *[f"![{p.stem}]({p.name})" for p in pngs], ""]
    t = result.get("timing", {})
    lines += [f"Wall time {result['wall_s']:.0f} s on {result['device']}"
              + (f" (sources {t['sources_s']:.0f} s, building sets {t['sets_s']:.0f} s, training targets "
                 f"{t['targets_s']:.0f} s, evaluating {t['eval_s']:.0f} s)" if t else "") + ".", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def summary_text(json_path: str | Path) -> str:
    """What ``vidcsl nonrobust`` prints: both matrices, the sanity lines and the notes."""
    result = json.loads(Path(json_path).read_text())
    rows, targets, clean, robust = matrices(result)
    ev = result["eval"]["label"]
    parts = ["sources: " + "; ".join(f"{s['name']} clean {fmt(s['clean_acc'], 3)} robust {fmt(s['robust_acc'], 3)}"
                                     for s in result["sources"]),
             "\nclean accuracy (real test split)",
             markdown_table(["set <- source", *targets], [[r, *v] for r, v in zip(rows, clean)], digits=3),
             f"\nrobust accuracy ({ev})",
             markdown_table(["set <- source", *targets], [[r, *v] for r, v in zip(rows, robust)], digits=3),
             "", *sanity_lines(result), PAPER_LINE]
    parts += [f"note: {n}" for n in result["notes"]]
    t = result.get("timing", {})
    parts.append(f"wall time {result['wall_s']:.0f} s" + (f" (sources {t['sources_s']:.0f} s, sets {t['sets_s']:.0f} s, "
                 f"targets {t['targets_s']:.0f} s, evaluation {t['eval_s']:.0f} s)" if t else ""))
    return "\n".join(parts)
