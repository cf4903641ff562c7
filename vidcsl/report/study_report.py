"""The report of a study (``runs_dir/``): Markdown, CSV tables and PNG plots from the study dict.

Works on the dict ``vidcsl.robustness.comparison.analyse_study`` returns (saved as ``study.json``), so a
report can be rebuilt from the file. Every number in the Markdown is the JSON's, printed with
:func:`vidcsl.report.tables.fmt` (a missing value is ``n/a``); an interval is printed as
``estimate [low, high]``, in bold where it excludes 0 (resolved). The protocol is docs/study.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vidcsl.report.tables import fmt, markdown_table, write_csv_rows

DIGITS = 3
KIND_TITLES = {"gap_closed": "Gap closed by FN removal, (RA_fn - RA_csl) / (RA_sl - RA_csl)",
               "fn_gain": "FN gain: the variant minus the same method without FN removal",
               "vs_csl": "Other paradigms minus CSL", "vs_random": "Trained minus the untrained encoder",
               "temperature": "CSL temperature sweep: highest minus lowest temperature"}


# ----------------------------------------------------------------------------------------------- cells


def fmt_interval(iv: dict[str, Any] | None, digits: int = DIGITS, *, bold_resolved: bool = True) -> str:
    """``estimate [low, high]`` (bold when resolved), ``estimate [n/a]`` when the interval is undefined,
    ``n/a`` when nothing was measured."""
    if not iv or iv.get("estimate") is None:
        return "n/a"
    text = fmt(iv["estimate"], digits)
    if iv.get("low") is None or iv.get("high") is None:
        return f"{text} [n/a]"
    text = f"{text} [{fmt(iv['low'], digits)}, {fmt(iv['high'], digits)}]"
    return f"**{text}**" if bold_resolved and iv.get("resolved") else text


def _est(iv: dict[str, Any] | None) -> float | None:
    return None if not iv else iv.get("estimate")


def _eps_text(m: dict[str, Any]) -> str:
    if m["eps"] == 0:
        return "0 (clean)"
    return f"{m['eps_255']:g}/255" if m["norm"] == "linf" else f"{m['eps']:g}"


def _once(measures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Measures for a table: eps 0 (clean) once per protocol and level, not once per norm."""
    seen, out = set(), []
    for m in measures:
        if m["eps"] == 0:
            if (m["protocol"], m["level"]) in seen:
                continue
            seen.add((m["protocol"], m["level"]))
        out.append(m)
    return out


def _spread_text(s: dict[str, Any] | None) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    return fmt(s["mean"], DIGITS) + (f" ± {fmt(s['sd'], DIGITS)}" if s.get("sd") is not None else "")


def _sweep(track: dict[str, Any], protocol: str = "standard", level: str | None = None,
           attack: str | None = None) -> list[dict[str, Any]]:
    attack = attack or track["headline"]["attack"]
    return [m for m in track["measures"] if m["protocol"] == protocol and m["attack"] == attack
            and (level is None or m["level"] == level)]


# ----------------------------------------------------------------------------------------------- tables


MAIN_HEADERS = ["paradigm", "variant", "seeds", "clean", "RA headline", "mean corruption", "uniformity",
                "alignment", "FN precision", "FN recall"]


def main_table(track: dict[str, Any]) -> str:
    """Models grouped by paradigm: clean and headline robust accuracy (with intervals, at every level),
    mean corruption accuracy, uniformity and alignment (mean ± sd over seeds), the FN detector's logs."""
    levels = track["levels"]
    headers = ["paradigm", "variant", "seeds"]
    for lvl in levels:
        suffix = f" ({lvl})" if len(levels) > 1 else ""
        headers += [f"clean{suffix}", f"RA headline{suffix}", f"mean corruption{suffix}"]
    headers += ["uniformity", "alignment", "FN precision", "FN recall"]
    rows = []
    for r in track["variants"]:
        row = [r["paradigm"], r["variant"], ",".join(str(s) for s in r["seeds"])]
        for lvl in levels:
            cell = r["levels"].get(lvl) or {}
            row += [fmt_interval(cell.get("clean"), bold_resolved=False),
                    fmt_interval(cell.get("robust"), bold_resolved=False), cell.get("corruption_mean")]
        row += [_spread_text(r["representation"].get("uniformity")), _spread_text(r["representation"].get("alignment")),
                r["fn_precision"], r["fn_recall"]]
        rows.append(row)
    return markdown_table(headers, rows, DIGITS)


def accuracy_table(track: dict[str, Any], protocol: str, level: str) -> tuple[list[str], list[list[Any]]]:
    """Clean and robust accuracy (means over seeds and samples) of every variant at every eps."""
    ms = [m for m in _sweep(track, protocol, level) if m["eps"] > 0]
    headers = ["variant", "clean", *[f"{m['norm']} {_eps_text(m)}" for m in ms]]  # clean beside every eps
    rows = []
    for r in track["variants"]:
        v = r["variant"]
        clean = next((m["clean"].get(v) for m in _sweep(track, protocol, level)), None)
        if clean is None and not any(v in m["accuracy"] for m in ms):
            continue
        rows.append([v, _est(clean), *[_est(m["accuracy"].get(v)) for m in ms]])
    return headers, rows


def protocol_rows(track: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Adversarial CSL under its own protocols (adversarial BN branch, robust linear evaluation) beside
    the standard linear evaluation of the same model, at the primary level."""
    level = track["primary_level"]
    others = sorted({m["protocol"] for m in track["measures"]} - {"standard"})
    if not others:
        return [], []
    std = _sweep(track, "standard", level)
    eps_cols = [(m["norm"], m["eps"]) for m in std if m["eps"] > 0]
    headers = ["variant", "protocol", "clean", *[f"{n} {_eps_text({'norm': n, 'eps': e, 'eps_255': e * 255})}"
                                                  for n, e in eps_cols]]
    rows = []
    for r in track["variants"]:
        v = r["variant"]
        if not any(v in m["accuracy"] for p in others for m in _sweep(track, p, level)):
            continue
        for p in ["standard", *others]:
            ms = {(m["norm"], m["eps"]): m for m in _sweep(track, p, level)}
            clean = next((m["clean"].get(v) for m in ms.values()), None)
            rows.append([v, p, fmt_interval(clean, bold_resolved=False),
                         *[fmt_interval(ms[c]["accuracy"].get(v), bold_resolved=False) if c in ms else "n/a"
                           for c in eps_cols]])
    return headers, rows


def gap_table(track: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """RA_sl - RA_csl at every eps and level of the standard protocol, clean accuracies beside it,
    McNemar's test of SL vs CSL on the same samples."""
    headers = ["level", "norm", "eps", "clean sl", "clean csl", "RA sl", "RA csl", "gap sl - csl [95%]",
               "McNemar only sl / only csl", "McNemar p"]
    rows = []
    for m in _once(_sweep(track)):
        res = m["comparisons"].get("gap")
        if res is None:
            continue
        mc = res.get("mcnemar") or {}
        rows.append([m["level"], m["norm"], _eps_text(m), _est(m["clean"].get("sl")), _est(m["clean"].get("csl")),
                     _est(m["accuracy"].get("sl")), _est(m["accuracy"].get("csl")), fmt_interval(res),
                     f"{mc['only_a']} / {mc['only_b']}" if mc else "n/a", mc.get("p_value")])
    return headers, rows


def comparison_table(track: dict[str, Any], kind: str) -> tuple[list[str], list[list[Any]]]:
    """One column per comparison of ``kind``, one row per measure (protocol, level, norm, eps) it was made at."""
    comps = [c for c in track["comparisons"] if c["kind"] == kind]
    if not comps:
        return [], []
    headers = ["protocol", "level", "norm", "eps", *[c["statistic"] for c in comps]]
    rows = []
    for m in _once(track["measures"]):
        if m["attack"] != track["headline"]["attack"] or not any(c["id"] in m["comparisons"] for c in comps):
            continue
        rows.append([m["protocol"], m["level"], m["norm"], _eps_text(m),
                     *[fmt_interval(m["comparisons"].get(c["id"])) for c in comps]])
    return headers, rows


def question_rows(track: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    headers = ["question", "measured at", "estimate [95%]", "answer", "why", "also resolved at"]
    rows = [[q["question"], q["where"], fmt_interval(q["interval"]), q["answer"], q["why"],
             "; ".join(q["resolved_elsewhere"]) or "none"] for q in track["questions"]]
    return headers, rows


def mechanism_rows(track: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Per variant: uniformity and alignment (mean ± sd over seeds) beside clean and headline robust accuracy."""
    level = track["primary_level"]
    headers = ["paradigm", "variant", "temperature", "uniformity", "alignment", "inter/intra ratio", "clean",
               "RA headline"]
    rows = []
    for r in track["variants"]:
        rep, cell = r["representation"], r["levels"].get(level) or {}
        rows.append([r["paradigm"], r["variant"], track["temperatures"].get(r["variant"]),
                     _spread_text(rep.get("uniformity")), _spread_text(rep.get("alignment")),
                     _spread_text(rep.get("inter_intra_ratio")), fmt_interval(cell.get("clean"), bold_resolved=False),
                     fmt_interval(cell.get("robust"), bold_resolved=False)])
    return headers, rows


def sanity_table(track: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    headers = ["variant", "seed", "protocol", "level", "sanity", "failed checks"]
    rows = [[s["variant"], s["seed"], s["protocol"], s["level"],
             "n/a" if s["pass"] is None else ("pass" if s["pass"] else "FAIL"), ", ".join(s["failed"]) or "none"]
            for s in track["sanity"]]
    return headers, rows


def recipe_rows(track: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """What each variant changes in the recipe, and the time its sub-runs took (means over seeds)."""
    headers = ["variant", "training keys that differ from csl (variant value / csl value)", "train s", "eval s"]
    rows = []
    for r in track["variants"]:
        diff = r.get("recipe_vs_csl")
        text = "n/a" if diff is None else ("none" if not diff else
                                           "; ".join(f"{k}: {a!r} / {b!r}" for k, (a, b) in diff.items()))
        secs = r.get("seconds") or {}
        rows.append([r["variant"], text, fmt(secs.get("train"), 1), fmt(secs.get("eval"), 1)])
    return headers, rows


def sharing_lines(track: dict[str, Any]) -> list[str]:
    """What SL and CSL share, as read off their sub-run configs (not assumed)."""
    s = track.get("budget_sharing")
    if not s:
        have = {r["variant"] for r in track.get("variants", [])}
        return ["SL and CSL are not both in this track, so no budget comparison is made." if not {"sl", "csl"} <= have
                else "The SL and CSL sub-runs' configs were not available, so what they share is not checked."]
    shared = ", ".join(f"{k} = {v!r}" for k, v in s["shared"].items()) or "none of the budget keys"
    lines = [f"**Shared budgets (checked on the sub-runs' configs).** SL and CSL share {shared}; "
             + ("augmentations: " + s["augmentations"]["detail"] if s["augmentations"]["shared"] else
                "augmentations are NOT shared: " + s["augmentations"]["detail"]) + "; "
             + ("every optimiser key (optim.*)" if s["optimiser"]["shared"] else "the optimiser is NOT shared: "
                + "; ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in s["optimiser"]["differs"].items()))
             + f". Each step sees the same images: SL {s['views_per_step']['sl']} augmented view(s) of each, CSL "
             f"{s['views_per_step']['csl']}."]
    if s["not_shared"]:
        lines.append("**Not shared:** " + "; ".join(f"{k} (sl {a!r}, csl {b!r})" for k, (a, b) in s["not_shared"].items())
                     + ".")
    rest = [k for k in s["differs"] if not k.startswith(("optim.", "data.")) and k not in s["not_shared"]]
    lines.append("They differ otherwise only in: " + (", ".join(rest) or "nothing") + ".")
    return [" ".join(lines)]


# ------------------------------------------------------------------------------------------------ plots


def _curves(track: dict[str, Any], level: str, norm: str, protocol: str = "standard"):
    ms = [m for m in _sweep(track, protocol, level) if m["norm"] == norm]
    curves = {}
    for r in track["variants"]:
        v = r["variant"]
        pts = [(m["eps_255"] if norm == "linf" else m["eps"], m["accuracy"].get(v)) for m in ms]
        if any(iv for _, iv in pts):
            curves[v] = ([x for x, _ in pts], [_est(iv) for _, iv in pts], [(iv or {}).get("low") for _, iv in pts],
                         [(iv or {}).get("high") for _, iv in pts])
    return curves


def _comparison_curves(track: dict[str, Any], level: str, norm: str, ids: list[str]):
    ms = [m for m in _sweep(track, "standard", level) if m["norm"] == norm]
    names = {c["id"]: c["statistic"] for c in track["comparisons"]}
    out = {}
    for cid in ids:
        pts = [(m["eps_255"] if norm == "linf" else m["eps"], m["comparisons"].get(cid)) for m in ms]
        if any(iv for _, iv in pts):
            out[names[cid]] = ([x for x, _ in pts], [_est(iv) for _, iv in pts],
                               [(iv or {}).get("low") for _, iv in pts], [(iv or {}).get("high") for _, iv in pts])
    return out


def _xlabel(norm: str) -> str:
    return "eps x 255 (L-inf)" if norm == "linf" else "eps (L2)"


def track_plots(track: dict[str, Any], out: Path) -> list[str]:
    """Accuracy vs eps and gap / gap closed vs eps with their intervals as error bars, the mechanism
    scatter and the corruption families; returns the file names written."""
    from vidcsl.report.plots import plot_corruption_bars, plot_interval_panels, plot_mechanism

    name, files = track["track"], []
    norms = [n for n in ("linf", "l2") if any(m["norm"] == n for m in _sweep(track))]
    panels = [(f"{lvl} {n}", _xlabel(n), _curves(track, lvl, n)) for lvl in track["levels"] for n in norms]
    panels = [p for p in panels if p[2]]
    if panels:
        files.append(plot_interval_panels(panels, out / f"{name}_accuracy_vs_eps.png", ylabel="robust accuracy",
                                          ylim=(0, 1), title=f"{name}: robust accuracy (95% intervals)").name)
    ids = [c["id"] for c in track["comparisons"] if c["kind"] in ("gap", "fn_gain", "vs_csl") and
           (c["kind"] != "fn_gain" or c["b"] == "csl")]
    panels = [(f"{lvl} {n}", _xlabel(n), _comparison_curves(track, lvl, n, ids)) for lvl in track["levels"]
              for n in norms]
    panels = [p for p in panels if p[2]]
    if panels:
        files.append(plot_interval_panels(panels, out / f"{name}_differences_vs_eps.png",
                                          ylabel="difference in robust accuracy", zero_line=True,
                                          title=f"{name}: differences with 95% intervals (resolved where the bar "
                                                "misses 0)").name)
    ids = [c["id"] for c in track["comparisons"] if c["kind"] == "gap_closed"]
    panels = [(f"{lvl} {n}", _xlabel(n), _comparison_curves(track, lvl, n, ids)) for lvl in track["levels"][:1]
              for n in norms]
    panels = [p for p in panels if p[2]]
    if panels:
        files.append(plot_interval_panels(panels, out / f"{name}_gap_closed_vs_eps.png", ylabel="gap closed",
                                          zero_line=True, title=f"{name}: gap closed by FN removal (95% intervals)"
                                          ).name)
    level = track["primary_level"]
    points = {}
    for r in track["variants"]:
        rep, robust = r["representation"], (r["levels"].get(level) or {}).get("robust") or {}
        points[r["variant"]] = {"uniformity": (rep.get("uniformity") or {}).get("mean"),
                                "uniformity_sd": (rep.get("uniformity") or {}).get("sd"),
                                "alignment": (rep.get("alignment") or {}).get("mean"),
                                "alignment_sd": (rep.get("alignment") or {}).get("sd"),
                                "y": robust.get("estimate"), "low": robust.get("low"), "high": robust.get("high"),
                                "group": r["paradigm"]}
    if any(p["uniformity"] is not None and p["y"] is not None for p in points.values()):
        h = track["headline"]
        files.append(plot_mechanism(points, out / f"{name}_uniformity_vs_robustness.png",
                                    robust_label=f"robust accuracy ({h['norm']} {h['eps']:g}"
                                                 f"{'/255' if h['norm'] == 'linf' else ''})").name)
    bars = {r["variant"]: r["corruption_family_mean"] for r in track["variants"] if r["corruption_family_mean"]}
    if bars:
        files.append(plot_corruption_bars(bars, out / f"{name}_corruptions.png", ylabel="accuracy (mean over "
                                          "severities, corruptions and seeds)", title=f"{name}: corruption families"
                                          ).name)
    return files


# ----------------------------------------------------------------------------------------------- report


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    return [markdown_table(headers, rows, DIGITS), ""] if headers else []


def limits(study: dict[str, Any], track: dict[str, Any]) -> list[str]:
    """What this budget cannot settle whatever the intervals say (attack strength, seeds, scale)."""
    out = []
    at = track.get("attacks") or {}
    ev = track.get("eval_settings") or {}
    if at:
        out.append(f"Attack strength: {', '.join(at.get('sweep', []))} with {at.get('steps')} steps and "
                   f"{at.get('restarts')} restart(s)" + ("" if at.get("autoattack") else
                                                          "; no AutoAttack, so a robust accuracy here is an upper "
                                                          "bound that a stronger attack may lower (check the sanity "
                                                          "panel)") + ".")
    if len(track["seeds"]) < 2:
        out.append("One training seed: the intervals hold test-sample noise only, not training variance.")
    n = track.get("n_samples")
    if ev.get("n_samples") is not None:
        out.append(f"A seeded subset of {n} test samples; the whole {track.get('split')} split would narrow "
                   "every interval.")
    few = [r["variant"] for r in track["variants"] if len(r["seeds"]) < len(track["seeds"])]
    if few:
        out.append(f"Trained with fewer seeds than the track: {', '.join(few)} (their comparisons use the seeds "
                   "they share).")
    out.append("Scale: every number holds for these models and budgets only; whether a paper's figure (e.g. a gap "
               "closed at full training length) holds is not tested by a small budget.")
    return out


def write_study_report(study: dict[str, Any], out: str | os.PathLike) -> Path:
    """``report.md``, ``study.json``, ``study.csv`` (accuracies), ``comparisons.csv``, ``questions.csv`` and
    per-track PNGs into ``out``; returns the report's path."""
    from vidcsl.train.logging import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "study.json", study)
    write_csv_rows(out / "study.csv", *accuracy_csv(study))
    write_csv_rows(out / "comparisons.csv", *comparison_csv(study))
    write_csv_rows(out / "questions.csv", *question_csv(study))
    st, h = study["statistics"], study["headline"]
    unit = "/255" if h["norm"] == "linf" else ""
    n_models = sum(len(r["seeds"]) for t in study["tracks"] for r in t["variants"])
    lines = [f"# Study `{study['name']}`", "",
             f"Config `{study['source']}`; {n_models} models (variant x seed) in `{study['runs_dir']}`. Every number "
             "below was measured by this run of the study: it is what these models, budgets and test samples gave, "
             "not a test of any paper's claim.", "",
             f"**How to read it.** Accuracies are means over training seeds and test samples. `estimate [low, high]` "
             f"is a {st['confidence'] * 100:g}% interval from a {st['resampling']} ({st['n_boot']} resamples): every "
             "model of a track was evaluated on the same test samples, and variants trained with the same seed are "
             f"paired. A difference is **resolved** only where its interval excludes 0 (printed in bold). Robust "
             f"accuracy (RA) comes from the attack sweep on encoder + linear probe (SL: its own classifier); clean "
             f"accuracy stands beside every robust figure. The headline is {h['norm']} eps = {h['eps']:g}{unit}. "
             "docs/study.md describes the protocol.", ""]
    for t in study["tracks"]:
        lines += [f"Track `{t['track']}`: " + " ".join(sharing_lines(t)), ""]
    lines += ["## What this budget resolves", ""]
    for t in study["tracks"]:
        lines += [f"### Track `{t['track']}`", ""] + _table(*question_rows(t))
        resolved = [q for q in t["questions"] if q["resolved"]]
        lines += [f"Resolved at the headline: {len(resolved)} of {len(t['questions'])} questions."
                  + (" " + "; ".join(f"{q['question']} {q['answer']}" for q in resolved) if resolved else ""), "",
                  "What this budget cannot resolve:", ""]
        lines += [f"- {q['question']} ({q['where']}): {q['why']}." for q in t["questions"] if not q["resolved"]]
        lines += [f"- {x}" for x in limits(study, t)] + [""]
    for t in study["tracks"]:
        lines += track_section(t, out)
    if study.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in study["notes"]] + [""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def track_section(t: dict[str, Any], out: Path) -> list[str]:
    nc = t.get("num_classes")
    lines = [f"## Track `{t['track']}`", "",
             f"Training config `{t['config']}`; {t['n_samples']} test samples of the {t.get('split')} split, the same "
             f"for every model; {fmt(nc)} classes (chance accuracy {fmt(1 / nc if nc else None, DIGITS)}); seeds "
             f"{', '.join(str(s) for s in t['seeds'])}"
             + (f"; levels: clip (the centre clip) and video (logits averaged over "
                f"{(t.get('eval_settings') or {}).get('video_clips', 'K')} clips, every clip attacked)" if t["is_video"]
                else "") + ".", "",
             "### Models by paradigm", "",
             "Clean and headline robust accuracy with 95% intervals; uniformity and alignment as mean ± sd over "
             "seeds (Wang & Isola 2020; lower uniformity = more uniform).", "", main_table(t), ""]
    for lvl in t["levels"]:
        lines += [f"### Robust accuracy per eps (standard protocol, {lvl} level)", "",
                  "Means over seeds and samples; the intervals are in study.json and drawn in the plots.", ""]
        lines += _table(*accuracy_table(t, "standard", lvl))
    head, rows = protocol_rows(t)
    if head:
        lines += ["### Adversarial CSL under its own protocols", "",
                  "`adv_bn`: through the adversarial BatchNorm branch (as ACL evaluates); `robust_probe`: a linear "
                  "probe trained on PGD examples (RoCL's robust linear evaluation); `standard` beside them.", ""]
        lines += _table(head, rows)
    head, rows = gap_table(t)
    if rows:
        lines += ["### SL vs CSL at every eps", "",
                  "McNemar's exact test counts the samples only one of the two gets right (pooled over seeds).", ""]
        lines += _table(head, rows)
    for kind, title in KIND_TITLES.items():
        head, rows = comparison_table(t, kind)
        if rows:
            lines += [f"### {title}", ""] + _table(head, rows)
    lines += ["### Mechanism: uniformity and alignment against robust accuracy", "",
              "Gupta et al. (2023) explain CSL's extra susceptibility by the uniform spread that false negatives force; "
              "if so, robust accuracy should fall as uniformity falls. The temperature sweep (csl_t*) varies "
              "uniformity within one method.", ""]
    lines += _table(*mechanism_rows(t))
    lines += ["### Sanity panel (per model)", "",
              "Robust accuracy non-increasing in eps, near 0 at a large eps, AutoAttack <= PGD where measured: a "
              "FAIL points to gradient masking or a weak attack.", ""]
    lines += _table(*sanity_table(t))
    lines += ["### Recipes", ""] + _table(*recipe_rows(t))
    lines += ["### Plots", ""] + [f"![{p}]({p})" for p in track_plots(t, out)] + [""]
    links = [f"[{r['variant']} seed {s}]({os.path.relpath(d, out)}/report.md)" for r in t["variants"]
             for s, d in zip(r["seeds"], r["eval_dirs"])]
    lines += ["Per-run reports: " + ", ".join(links), ""]
    return lines


# -------------------------------------------------------------------------------------------------- CSV


def accuracy_csv(study: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    headers = ["track", "protocol", "level", "attack", "norm", "eps", "eps_255", "variant", "seeds", "n_samples",
               "clean", "accuracy", "low", "high"]
    rows = [[t["track"], m["protocol"], m["level"], m["attack"], m["norm"], m["eps"], m["eps_255"], v,
             " ".join(str(s) for s in iv["seeds"]), iv["n_samples"], _est(m["clean"].get(v)), iv["estimate"],
             iv["low"], iv["high"]]
            for t in study["tracks"] for m in t["measures"] for v, iv in m["accuracy"].items()]
    return headers, rows


def comparison_csv(study: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    headers = ["track", "protocol", "level", "attack", "norm", "eps", "eps_255", "comparison", "estimate", "low",
               "high", "resolved", "seeds", "n_samples", "mcnemar_only_a", "mcnemar_only_b", "mcnemar_p"]
    rows = []
    for t in study["tracks"]:
        for m in t["measures"]:
            for cid, r in m["comparisons"].items():
                mc = r.get("mcnemar") or {}
                rows.append([t["track"], m["protocol"], m["level"], m["attack"], m["norm"], m["eps"], m["eps_255"],
                             cid, r["estimate"], r["low"], r["high"], r["resolved"],
                             " ".join(str(s) for s in r["seeds"]), r["n_samples"], mc.get("only_a"),
                             mc.get("only_b"), mc.get("p_value")])
    return headers, rows


def question_csv(study: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    headers = ["track", "question", "comparison", "measured_at", "estimate", "low", "high", "resolved", "answer",
               "why"]
    rows = [[t["track"], q["question"], q["comparison"], q["where"], _est(q["interval"]),
             (q["interval"] or {}).get("low"), (q["interval"] or {}).get("high"), q["resolved"], q["answer"],
             q["why"]] for t in study["tracks"] for q in t["questions"]]
    return headers, rows


def load_study(path: str | os.PathLike) -> dict[str, Any]:
    """A ``study.json`` back as the dict the report is written from."""
    return json.loads(Path(path).read_text())
