"""The report of one evaluation (``RUN/eval/``): Markdown, CSV tables and PNG plots from ``eval.json``.

Works on the ``eval.json`` dict alone (written by ``vidcsl.robustness.evaluate``; its fields are
described in ``docs/evaluation.md``), so a report can be rebuilt from the file. Every number in the
Markdown is the JSON's, printed with :func:`vidcsl.report.tables.fmt`; clean accuracy stands beside every
robust figure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vidcsl.report.tables import fmt, markdown_table, write_csv_rows

REP_KEYS = ["alignment", "uniformity", "inter_intra_ratio", "sensitivity_random", "sensitivity_adversarial"]
ROBUST_HEADERS = ["protocol", "level", "attack", "norm", "eps", "eps_255", "clean", "acc", "n"]
CORRUPTION_HEADERS = ["protocol", "level", "name", "family", "severity", "clean", "acc", "n"]
SANITY_HEADERS = ["protocol", "level", "check", "attack", "norm", "numbers", "result"]


def _levels(result: dict[str, Any]):
    """(protocol, level, level summary) in report order."""
    for protocol, p in result["protocols"].items():
        for level, s in p["levels"].items():
            yield protocol, level, s


def _eps_label(norm: str, entry: dict[str, Any]) -> str:
    return f"{fmt(entry['eps_255'], 3).rstrip('0').rstrip('.')}/255" if norm == "linf" else \
        fmt(entry["eps"], 3).rstrip("0").rstrip(".")


def robust_rows(result: dict[str, Any]) -> list[list[Any]]:
    """One row per protocol, level, attack, norm and eps of the sweeps, with the clean accuracy beside it."""
    return [[protocol, level, attack, norm, e["eps"], e.get("eps_255"), s["clean_acc"], e["acc"], e["n"]]
            for protocol, level, s in _levels(result) for attack, norms in s["robust"].items()
            for norm, entries in norms.items() for e in entries]


def corruption_rows(result: dict[str, Any]) -> list[list[Any]]:
    return [[protocol, level, r["name"], r["family"], r["severity"], s["clean_acc"], r["acc"], r["n"]]
            for protocol, level, s in _levels(result) if s["corruptions"] for r in s["corruptions"]["per_corruption"]]


def _numbers(check: dict[str, Any]) -> str:
    if "curve" in check:
        unit = 255 if check["norm"] == "linf" else 1
        return ", ".join(f"{round(e * unit, 6):g}{'/255' if unit == 255 else ''}: {fmt(a, 3)}"
                         for e, a in check["curve"])
    if "autoattack" in check:
        return f"autoattack {fmt(check['autoattack'])} vs {fmt(check['reference'])} at {_eps_label(check['norm'], check)}"
    return f"{fmt(check['acc'])} at {_eps_label(check['norm'], check)} (max {fmt(check['max_acc'], 3)})"


def sanity_rows(result: dict[str, Any]) -> list[list[Any]]:
    return [[protocol, level, c["check"], c.get("attack", "autoattack"), c["norm"], _numbers(c),
             "pass" if c["pass"] else "FAIL"]
            for protocol, level, s in _levels(result) if s.get("sanity") for c in s["sanity"]["checks"]]


def summary_table(result: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Clean, robust accuracy at every eps of every sweep, AutoAttack and mean corruption per protocol / level."""
    columns: list[tuple[str, str, str, float]] = []  # (header, attack, norm, eps)
    for _, _, s in _levels(result):
        for attack, norms in s["robust"].items():
            for norm, entries in norms.items():
                for e in entries:
                    head = f"{attack} {norm} {_eps_label(norm, e)}"
                    if e["eps"] > 0 and head not in [c[0] for c in columns]:
                        columns.append((head, attack, norm, e["eps"]))
    has_aa = any(s["autoattack"] for _, _, s in _levels(result))
    headers = ["protocol", "level", "n", "clean", *[c[0] for c in columns]] + (["autoattack"] if has_aa else []) + \
        ["mean corruption", "sanity"]
    rows = []
    for protocol, level, s in _levels(result):
        accs = {(a, n, e["eps"]): e["acc"] for a, norms in s["robust"].items() for n, es in norms.items() for e in es}
        row = [protocol, level, s["n_samples"], s["clean_acc"], *[accs.get(c[1:]) for c in columns]]
        if has_aa:
            row.append(s["autoattack"]["acc"] if s["autoattack"] else None)
        sanity = s.get("sanity")
        row += [s["corruptions"]["mean"] if s["corruptions"] else None,
                "n/a" if not sanity else ("pass" if sanity["pass"] else "FAIL")]
        rows.append(row)
    return headers, rows


def protocol_lines(result: dict[str, Any]) -> list[str]:
    """What was evaluated and how, in words (the report's header)."""
    at = result["attacks"]
    lines = ["## Protocol", ""]
    for name, p in result["protocols"].items():
        probe = p.get("probe")
        text = f"- `{name}`: {p['description']}."
        if probe:
            settings = probe.get("settings") or {}
            views = settings.get("view_protocol")
            fit = (f" The probe was fit on per-clip features of {views['clips']} uniform clip(s) x {views['crops']} "
                   f"crop(s) per training video and selected on video-level validation accuracy"
                   if views else " The probe was selected on validation accuracy")
            robust = settings.get("robust")
            if robust:
                fit += (f"; trained on PGD-{robust['steps']} examples (L-inf, eps {fmt(robust['eps_255'], 1)}/255, "
                        f"alpha {fmt(robust['alpha_255'], 1)}/255) against the encoder and the probe")
            levels = "; ".join(f"{lvl} test {fmt(v.get('test_acc'))}" for lvl, v in (probe.get("levels") or {}).items())
            text += f"{fit} (epoch {probe.get('best_epoch')}, val {fmt(probe.get('val_acc'))}; {levels})."
        lines.append(text)
    for name, why in result.get("protocols_skipped", {}).items():
        lines.append(f"- `{name}`: not measured ({why}).")
    if result["is_video"]:
        k = result["video_clips"]
        lines.append(f"- Levels: `clip` = the centre clip (clip {k // 2} of {k} uniform clips, one centre crop); "
                     f"`video` = logits averaged over the {k} clips. A video-level attack perturbs all {k} clips, "
                     "each within eps, maximising the loss of the averaged logits.")
    aa = at.get("autoattack")
    lines.append(f"- Attacks: {', '.join(at['sweep'])} with {at['steps']} steps (alpha = {fmt(at['alpha_factor'], 2)} "
                 f"eps / steps, random start {'on' if at['random_start'] else 'off'}, {at['restarts']} restart(s)), "
                 "swept upward in eps (a sample broken at one eps counts as broken at every larger one)"
                 + (f"; AutoAttack ({aa['version']}, {aa['norm']}, eps {fmt(aa['eps'] * 255, 1)}/255)." if aa else "."))
    lines.append(f"- Per-sample outcomes: `{result['outcomes']['file']}` ({result['outcomes']['n_keys']} measures "
                 f"on {result['outcomes']['n_samples']} samples); every accuracy here is computed from it.")
    return lines + [""]


def _plots(result: dict[str, Any], out: Path) -> list[str]:
    from vidcsl.report.plots import plot_accuracy_vs_eps, plot_corruption_bars, plot_histogram

    files = []
    for norm, scale, xlabel in (("linf", 255.0, "eps (x/255)"), ("l2", 1.0, "eps (L2)")):
        curves = {}
        for protocol, level, s in _levels(result):
            for attack, norms in s["robust"].items():
                entries = norms.get(norm, [])
                if entries:
                    curves[f"{protocol}/{level} {attack}"] = ([e["eps"] for e in entries], [e["acc"] for e in entries])
        if curves:
            files.append(plot_accuracy_vs_eps(curves, out / f"accuracy_vs_eps_{norm}.png", eps_scale=scale,
                                              xlabel=xlabel, title=f"Robust accuracy ({norm})").name)
    bars = {f"{p}/{lvl}": s["corruptions"]["corruption_mean"] for p, lvl, s in _levels(result) if s["corruptions"]}
    if bars:
        files.append(plot_corruption_bars(bars, out / "corruptions.png",
                                          ylabel="accuracy (mean over severities)").name)
    rep = result["representation"]
    hist = rep["cosine_hist"]
    files.append(plot_histogram(hist["counts"], hist["edges"], out / "uniformity_hist.png",
                                xlabel="cosine similarity of two test samples", ylabel="pairs",
                                title=f"uniformity {fmt(rep['uniformity'], 3)}").name)
    return files


def write_run_report(result: dict[str, Any], out: str | os.PathLike, *, plots: bool = True) -> Path:
    """``eval.json``, ``accuracy.csv``, ``robust.csv``, ``corruptions.csv``, ``sanity.csv``,
    ``representation.csv``, PNGs (unless ``plots=False``) and ``report.md`` into ``out``.

    A study passes ``plots=False`` for its sub-runs: its own report plots every model side by side, and
    four PNGs per model cost about a second each on a small CPU."""
    from vidcsl.train.logging import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", result)
    sum_h, sum_rows = summary_table(result)
    write_csv_rows(out / "accuracy.csv", sum_h, sum_rows)
    write_csv_rows(out / "robust.csv", ROBUST_HEADERS, robust_rows(result))
    write_csv_rows(out / "corruptions.csv", CORRUPTION_HEADERS, corruption_rows(result))
    write_csv_rows(out / "sanity.csv", SANITY_HEADERS, sanity_rows(result))
    rep = result["representation"]
    write_csv_rows(out / "representation.csv", ["metric", "value"], [[k, rep[k]] for k in REP_KEYS])
    figures = _plots(result, out) if plots else []
    kind = "supervised model" if result["model_kind"] == "supervised" else "frozen encoder + linear probe"
    lines = [f"# Evaluation of `{result['run']}`", "",
             f"Method `{result['method']}` (FN detector `{result['fn_detector']}`), encoder `{result['encoder']}`, "
             f"dataset `{result['dataset']}`; standard protocol: {kind}; {result['n_samples']} samples of the "
             f"{result['split']} split (a seeded subset, the same for every model evaluated with these settings). "
             "Numbers as measured on this subset.", ""]
    lines += protocol_lines(result)
    lines += ["## Accuracy", "", "Clean accuracy beside robust accuracy (robust columns: attack, norm, eps).", "",
              markdown_table(sum_h, sum_rows), "",
              "## Sanity panel", "",
              "Gradient masking shows as robust accuracy rising with eps, staying well above 0 at a large eps, or "
              "AutoAttack scoring above the sweep attack.", "",
              markdown_table(SANITY_HEADERS, sanity_rows(result)), "",
              "## Robust accuracy", "", markdown_table(ROBUST_HEADERS, robust_rows(result)), ""]
    fam_rows = [[p, lvl, fam, s["clean_acc"], acc] for p, lvl, s in _levels(result) if s["corruptions"]
                for fam, acc in s["corruptions"]["family_mean"].items()]
    name_rows = [[p, lvl, name, s["clean_acc"], acc] for p, lvl, s in _levels(result) if s["corruptions"]
                 for name, acc in s["corruptions"]["corruption_mean"].items()]
    n_corr = max((s["corruptions"]["n_samples"] for _, _, s in _levels(result) if s["corruptions"]), default=0)
    lines += [f"## Corruptions ({n_corr} samples; mean over severities)", "",
              markdown_table(["protocol", "level", "family", "clean", "acc"], fam_rows), "",
              markdown_table(["protocol", "level", "corruption", "clean", "acc"], name_rows), "",
              "## Representation (L2-normalised backbone features, standard protocol)", "",
              markdown_table(["metric", "value"], [[k, rep[k]] for k in REP_KEYS]), ""]
    det = result.get("fn_detector_stats")
    if det:
        lines += ["## False-negative detector (last training log)", "",
                  markdown_table(["precision", "recall"], [[det.get("precision"), det.get("recall")]]), ""]
    if result.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in result["notes"]] + [""]
    if figures:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in figures] + [""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"
