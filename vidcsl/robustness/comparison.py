"""The comparison of a study: paired statistics over the sub-runs' per-sample outcomes, and the questions
the study asks, each called *resolved* only where its interval excludes 0 (docs/study.md).

Input: the sub-runs of each track (variant x seed), each with ``eval/eval.json`` and ``eval/outcomes.npz``.
Every model of a track was evaluated on the same test samples, so their outcomes are aligned on the
samples they share; a comparison of variants uses the training seeds they share. At every measure of the
sweep (protocol x level x attack x norm x eps, eps 0 = clean) this module computes each variant's
accuracy and each comparison of the track with a paired-bootstrap interval over samples and seeds
(:mod:`vidcsl.robustness.stats`), plus McNemar's test for the differences. The result is one JSON-ready
dict per track, which ``vidcsl.report.study_report`` turns into the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np

from vidcsl.errors import DataError
from vidcsl.robustness.outcomes import FILE_NAME as OUTCOMES_FILE
from vidcsl.robustness.outcomes import Outcomes, outcome_key
from vidcsl.robustness.stats import (
    mcnemar,
    percentile_interval,
    resampled_accuracies,
    seed_interval,
)
from vidcsl.robustness.study import PARADIGMS, budget_sharing, recipe_differences, variant_spec

PROTOCOL_ORDER = ("standard", "adv_bn", "robust_probe")
LEVEL_ORDER = ("image", "clip", "video")
REPRESENTATION = ("uniformity", "alignment", "inter_intra_ratio")


@dataclass
class SubRun:
    variant: str
    seed: int
    run_dir: Path
    eval: dict[str, Any]
    outcomes: Outcomes
    cfg: Any = None  # vidcsl.config.Config of the run (None: not known)


def load_sub_run(variant: str, seed: int, run_dir: str | Path, cfg: Any = None) -> SubRun:
    """A sub-run's ``eval.json`` and ``outcomes.npz`` (DataError naming the folder when one is missing)."""
    import json

    run_dir = Path(run_dir)
    path = run_dir / "eval" / "eval.json"
    try:
        ev = json.loads(path.read_text())
    except (OSError, ValueError):
        raise DataError(f"sub-run {str(run_dir)!r} has no readable eval/eval.json (evaluate it first)") from None
    return SubRun(variant, seed, run_dir, ev, Outcomes.load(run_dir / "eval" / OUTCOMES_FILE), cfg)


# ------------------------------------------------------------------------------------- paired outcomes


class PairedOutcomes:
    """The sub-runs of one track, aligned on common samples and resampled once per (measure, seeds).

    ``reps(key, seeds)`` gives the bootstrap accuracies of every variant that has ``key`` for all of
    ``seeds``, from one paired draw; ``compare`` and ``accuracy`` evaluate statistics on them.
    """

    def __init__(self, runs: dict[str, dict[int, SubRun]], *, n_boot: int, level: float, seed: int = 0):
        self.runs, self.n_boot, self.level, self.seed = runs, n_boot, level, seed
        self._cache: dict[tuple[str, tuple[int, ...]], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}

    def seeds_with(self, variant: str, key: str) -> list[int]:
        return sorted(s for s, r in self.runs.get(variant, {}).items() if key in r.outcomes)

    def common_seeds(self, variants: Sequence[str], key: str) -> list[int]:
        sets = [set(self.seeds_with(v, key)) for v in variants]
        return sorted(reduce(set.intersection, sets)) if sets else []

    def _aligned(self, key: str, seeds: tuple[int, ...]) -> dict[str, np.ndarray]:
        """{variant: (seeds, samples) bool} for every variant with ``key`` at all ``seeds``, on the samples
        all of them share (sorted by dataset index)."""
        members = [v for v in self.runs if set(seeds) <= set(self.seeds_with(v, key))]
        parts = {(v, s): self.runs[v][s].outcomes.samples(key) for v in members for s in seeds}
        if not parts:
            return {}
        common = reduce(np.intersect1d, [idx for idx, _ in parts.values()])
        labels = None
        out: dict[str, list[np.ndarray]] = {}
        for (v, s), (idx, ok) in parts.items():
            order = np.argsort(idx)
            pos = order[np.searchsorted(idx, common, sorter=order)]
            run = self.runs[v][s]
            lab = run.outcomes.label[pos]
            if labels is None:
                labels = lab
            elif not np.array_equal(lab, labels):
                raise DataError(f"sub-run {str(run.run_dir)!r} labels test samples differently from the other "
                                f"sub-runs of its track: their test splits differ (a dataset whose test split "
                                f"depends on train.seed?), so their outcomes cannot be paired")
            out.setdefault(v, []).append(ok[pos])
        return {v: np.stack(rows) for v, rows in out.items()}

    def reps(self, key: str, seeds: Sequence[int]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(aligned outcomes, bootstrap accuracies) of every variant having ``key`` at all ``seeds``."""
        k = (key, tuple(seeds))
        if k not in self._cache:
            arrays = self._aligned(key, k[1])
            reps = resampled_accuracies(arrays, n_boot=self.n_boot, seed=self.seed) if arrays else {}
            self._cache[k] = (arrays, reps)
        return self._cache[k]

    def interval(self, variants: Sequence[str], key: str,
                 statistic: Callable[[dict[str, np.ndarray]], np.ndarray]) -> dict[str, Any] | None:
        """``statistic`` of the variants' accuracies with its interval, on their common seeds and samples
        (None when some variant lacks the measure)."""
        seeds = self.common_seeds(variants, key)
        if not seeds:
            return None
        arrays, reps = self.reps(key, seeds)
        estimate = float(statistic({v: np.asarray([arrays[v].mean()]) for v in variants})[0])
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.asarray(statistic({v: reps[v] for v in variants}), dtype=float)
        iv = percentile_interval(estimate, values, level=self.level)
        return {**iv.as_dict(), "seeds": seeds, "n_samples": int(arrays[variants[0]].shape[1])}

    def accuracy(self, variant: str, key: str) -> dict[str, Any] | None:
        return self.interval([variant], key, lambda a: a[variant])

    def mcnemar(self, a: str, b: str, key: str) -> dict[str, Any] | None:
        seeds = self.common_seeds([a, b], key)
        if not seeds:
            return None
        arrays, _ = self.reps(key, seeds)
        return mcnemar(arrays[a], arrays[b]).as_dict()


# ------------------------------------------------------------------------------------------ comparisons


def _difference(a: str, b: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    return lambda acc: acc[a] - acc[b]


def _share(sl: str, csl: str, fn: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    def stat(acc: dict[str, np.ndarray]) -> np.ndarray:
        gap = acc[sl] - acc[csl]
        return np.where(gap != 0, (acc[fn] - acc[csl]) / np.where(gap != 0, gap, 1.0), np.nan)

    return stat


@dataclass(frozen=True)
class Comparison:
    """One statistic of a track's variants: ``a - b`` (kinds gap, fn_gain, vs_csl, vs_random, temperature)
    or the gap closed ``(fn - csl) / (sl - csl)`` (kind gap_closed, ``a`` = the FN variant)."""

    id: str
    kind: str
    a: str
    b: str

    @property
    def variants(self) -> list[str]:
        return ["sl", "csl", self.a] if self.kind == "gap_closed" else [self.a, self.b]

    def statistic(self) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        return _share("sl", "csl", self.a) if self.kind == "gap_closed" else _difference(self.a, self.b)

    def describe(self) -> str:
        if self.kind == "gap_closed":
            return f"({self.a} - csl) / (sl - csl)"
        return f"{self.a} - {self.b}"


def temperatures(runs: dict[str, dict[int, SubRun]]) -> dict[str, float]:
    """The InfoNCE temperature of csl and every csl_t<T> variant of a track (from their configs)."""
    out = {}
    for v, by_seed in runs.items():
        if v == "csl" or v.startswith("csl_t"):
            cfg = next((r.cfg for r in by_seed.values() if r.cfg is not None), None)
            if cfg is not None:
                out[v] = float(cfg.method.temperature)
            elif v != "csl":
                out[v] = float(v.removeprefix("csl_t"))
    return out


def track_comparisons(variants: Sequence[str], temps: dict[str, float]) -> list[Comparison]:
    """The comparisons a track's variants allow, in the report's order."""
    have = set(variants)
    out = []
    if {"sl", "csl"} <= have:
        out.append(Comparison("gap", "gap", "sl", "csl"))
    for v in variants:
        spec = variant_spec(v)
        if spec.base == "csl" and {"sl", "csl"} <= have:
            out.append(Comparison(f"gap_closed:{v}", "gap_closed", v, "csl"))
    for v in variants:
        spec = variant_spec(v)
        if spec.fn and spec.base in have:
            out.append(Comparison(f"fn_gain:{v}", "fn_gain", v, spec.base))
    if "csl" in have:
        for v in variants:
            spec = variant_spec(v)
            if v not in ("sl", "csl", "random_init") and not spec.fn:
                out.append(Comparison(f"vs_csl:{v}", "vs_csl", v, "csl"))
    if "random_init" in have:
        out += [Comparison(f"vs_random:{v}", "vs_random", v, "random_init") for v in ("sl", "csl") if v in have]
    swept = sorted((t, v) for v, t in temps.items() if v in have)
    if len(swept) >= 2:
        (_, low), (_, high) = swept[0], swept[-1]
        out.append(Comparison(f"temperature:{high}-{low}", "temperature", high, low))
    return out


# ----------------------------------------------------------------------------------------------- measures


def _order(protocol: str, level: str, attack: str, norm: str, eps: float) -> tuple:
    rank = lambda seq, x: seq.index(x) if x in seq else len(seq)  # noqa: E731
    return (rank(PROTOCOL_ORDER, protocol), rank(LEVEL_ORDER, level), attack != "pgd", attack,
            norm != "linf", eps)


def measures_of(runs: dict[str, dict[int, SubRun]]) -> list[dict[str, Any]]:
    """Every (protocol, level, attack, norm, eps) of the sweeps (and AutoAttack) any sub-run reports."""
    found: dict[str, dict[str, Any]] = {}
    for by_seed in runs.values():
        for run in by_seed.values():
            for protocol, p in (run.eval.get("protocols") or {}).items():
                for level, s in p["levels"].items():
                    entries = [(a, n, e["eps"]) for a, norms in s.get("robust", {}).items()
                               for n, es in norms.items() for e in es]
                    aa = s.get("autoattack")
                    if aa:
                        entries.append(("autoattack", aa["norm"], aa["eps"]))
                    for attack, norm, eps in entries:
                        key = outcome_key(protocol, level, attack, norm=norm, eps=eps)
                        found.setdefault(key, {"key": key, "protocol": protocol, "level": level, "attack": attack,
                                               "norm": norm, "eps": eps,
                                               "eps_255": round(eps * 255, 6) if norm == "linf" else None,
                                               "clean_key": outcome_key(protocol, level, "clean")})
    return sorted(found.values(), key=lambda m: _order(m["protocol"], m["level"], m["attack"], m["norm"], m["eps"]))


def measure_label(m: dict[str, Any]) -> str:
    eps = f"{m['eps_255']:g}/255" if m["norm"] == "linf" else f"{m['eps']:g}"
    return f"{m['protocol']}/{m['level']} {m['attack']} {m['norm']} {eps}"


def analyse_measure(paired: PairedOutcomes, m: dict[str, Any], comparisons: list[Comparison]) -> dict[str, Any]:
    key = m["key"]
    accuracy = {v: paired.accuracy(v, key) for v in paired.runs}
    clean = {v: paired.accuracy(v, m["clean_key"]) for v in paired.runs}
    results: dict[str, Any] = {}
    for c in comparisons:
        res = paired.interval(c.variants, key, c.statistic())
        if res is None:
            continue
        if c.kind != "gap_closed":
            res["mcnemar"] = paired.mcnemar(c.a, c.b, key)
            res["clean"] = paired.interval(c.variants, m["clean_key"], c.statistic())
        results[c.id] = res
    gap = results.get("gap")
    for c in comparisons:  # a share of the gap is only defined where the gap itself is resolved and positive
        res = results.get(c.id)
        if c.kind == "gap_closed" and res is not None:
            gap_ok = gap is not None and gap["resolved"] and gap["estimate"] > 0
            res["resolved"] = bool(res["resolved"] and gap_ok)
            res["gap_resolved"] = gap_ok
    return {**m, "label": measure_label(m), "accuracy": {v: a for v, a in accuracy.items() if a is not None},
            "clean": {v: a for v, a in clean.items() if a is not None}, "comparisons": results}


# ----------------------------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class Question:
    text: str
    comparison: str
    sign: int  # +1: "yes" when the statistic is resolved > 0; -1: when resolved < 0
    protocol: str = "standard"
    level: str | None = None  # None: the track's primary level (image, or clip for videos)


def track_questions(comparisons: list[Comparison], measures: list[dict[str, Any]],
                    levels: Sequence[str]) -> list[Question]:
    """The questions a track's comparisons answer: each at the standard protocol and primary level; the
    SL - CSL gap also at the video level of a video track; FN gains under every protocol both models have."""
    protocols = {c.id: sorted({m["protocol"] for m in measures if c.id in m["comparisons"]},
                              key=lambda p: _order(p, "", "", "", 0)) for c in comparisons}
    label = lambda v: variant_spec(v).label  # noqa: E731
    qs = []
    for c in comparisons:
        if c.kind == "gap":
            qs += [Question("Is SL more robust than CSL?", c.id, 1, level=lvl)
                   for lvl in ([None, "video"] if "video" in levels else [None])]
        elif c.kind == "gap_closed":
            qs.append(Question(f"Does FN removal ({label(c.a)}) close part of the SL - CSL gap?", c.id, 1))
        elif c.kind == "fn_gain":
            qs += [Question(f"Does FN removal make {label(c.b)} more robust ({label(c.a)})?", c.id, 1, p)
                   for p in protocols[c.id] or ["standard"]]
        elif c.kind == "vs_csl":
            qs.append(Question(f"Is {label(c.a)} ({variant_spec(c.a).paradigm}) more robust than CSL?", c.id, 1))
        elif c.kind == "vs_random":
            qs.append(Question(f"Is {label(c.a)} more robust than the untrained encoder + probe?", c.id, 1))
        elif c.kind == "temperature":
            qs.append(Question(f"Is CSL at the highest temperature ({c.a}) more robust than at the lowest ({c.b})?",
                               c.id, 1))
    return qs


def _needed(iv: dict[str, Any]) -> str:
    """How much more data a difference of this size would need, if real (width scales as 1/sqrt(n))."""
    est, low, high = iv.get("estimate"), iv.get("low"), iv.get("high")
    if est is None or low is None or high is None or est == 0:
        return ""
    factor = ((high - low) / 2 / abs(est)) ** 2
    return f"; a difference of this size, if real, would need about {factor:.0f}x the samples x seeds"


def verdict(iv: dict[str, Any] | None, sign: int, *, missing: str, gap_note: bool = False) -> tuple[str, str]:
    """(answer, why) of a question from its interval: yes / no (the opposite is resolved) / not resolved."""
    if iv is None:
        return "not measured", missing
    seeds = len(iv.get("seeds") or [])
    seed_note = " (one seed: the interval holds test-sample noise only, not training variance)" if seeds == 1 else ""
    if iv.get("resolved"):
        yes = (iv["estimate"] > 0) == (sign > 0)
        return ("yes" if yes else "no: the opposite is resolved"), f"the interval excludes 0{seed_note}"
    if gap_note and not iv.get("gap_resolved", True):
        return "not resolved", "the SL - CSL gap itself is not resolved (or not positive) here, so a share of it is " \
                               "not defined"
    if iv.get("low") is None:
        return "not resolved", (f"interval undefined: the statistic was undefined in {iv['n_boot'] - iv['n_valid']} "
                                f"of {iv['n_boot']} resamples")
    where = f"{iv.get('n_samples')} samples x {seeds} seed(s)" if "n_samples" in iv else f"{seeds} seed(s)"
    return "not resolved", f"the interval contains 0 ({where}){_needed(iv)}{seed_note}"


def answer_questions(questions: list[Question], measures: list[dict[str, Any]], headline: dict[str, Any],
                     primary: str) -> list[dict[str, Any]]:
    """Each question at its headline measure, plus where else (eps, norm, level of its protocol) it is
    resolved."""
    out = []
    for q in questions:
        level = q.level or primary
        target = next((m for m in measures if m["protocol"] == q.protocol and m["level"] == level
                       and m["attack"] == headline["attack"] and m["norm"] == headline["norm"]
                       and math.isclose(m["eps_255"] if m["norm"] == "linf" else m["eps"], headline["eps"],
                                        rel_tol=1e-6, abs_tol=1e-9)), None)
        iv = target["comparisons"].get(q.comparison) if target else None
        missing = (f"no {q.protocol}/{level} measure at the headline eps" if target is None else
                   f"not measured under {q.protocol}/{level} for every variant it compares")
        answer, why = verdict(iv, q.sign, missing=missing, gap_note=q.comparison.startswith("gap_closed"))
        elsewhere = [f"{m['label']} ({'+' if m['comparisons'][q.comparison]['estimate'] > 0 else '-'})"
                     for m in measures if m["protocol"] == q.protocol and m is not target and m["eps"] > 0
                     and m["comparisons"].get(q.comparison, {}).get("resolved")]
        where = target["label"] if target else f"{q.protocol}/{level} {headline['attack']} {headline['norm']} " \
                                               f"{headline['eps']:g}"
        out.append({"question": q.text, "comparison": q.comparison, "where": where, "interval": iv,
                    "resolved": bool(iv and iv.get("resolved")), "answer": answer, "why": why,
                    "resolved_elsewhere": elsewhere})
    return out


def representation_questions(rep: dict[str, dict[str, Any]], variants: Sequence[str], temps: dict[str, float],
                             level: float) -> list[dict[str, Any]]:
    """Uniformity questions (Gupta et al.'s mechanism), with Student-t intervals over the shared seeds."""
    def diff(a: str, b: str) -> dict[str, Any] | None:
        if a not in rep or b not in rep:
            return None
        seeds = sorted(set(rep[a]["per_seed"]) & set(rep[b]["per_seed"]))
        iv = seed_interval([rep[a]["per_seed"][s] for s in seeds], [rep[b]["per_seed"][s] for s in seeds],
                           level=level)
        return {**iv.as_dict(), "seeds": seeds}

    asked = []
    if {"sl", "csl"} <= set(variants):
        asked.append(("Are CSL representations more uniform than SL's (lower uniformity)?", "csl", "sl", -1))
    for v in variants:
        if variant_spec(v).paradigm == "negative-free" and "csl" in variants:
            asked.append((f"Are {variant_spec(v).label} representations less uniform than CSL's?", v, "csl", 1))
    swept = sorted((t, v) for v, t in temps.items() if v in variants)
    if len(swept) >= 2:
        asked.append((f"Is CSL less uniform at the highest temperature ({swept[-1][1]}) than at the lowest "
                      f"({swept[0][1]})?", swept[-1][1], swept[0][1], 1))
    out = []
    for text, a, b, sign in asked:
        iv = diff(a, b)
        answer, why = verdict(iv, sign, missing="uniformity not measured")
        if iv is not None and iv["low"] is None:
            answer, why = "not resolved", "needs at least two seeds (a Student-t interval over training seeds)"
        out.append({"question": text, "comparison": f"uniformity:{a}-{b}", "where": "representation (standard)",
                    "interval": iv, "resolved": bool(iv and iv["resolved"]), "answer": answer, "why": why,
                    "resolved_elsewhere": []})
    return out


# ----------------------------------------------------------------------------------------------- per track


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _spread(per_seed: dict[int, float | None]) -> dict[str, Any]:
    vals = [v for v in per_seed.values() if v is not None and math.isfinite(v)]
    return {"mean": float(np.mean(vals)) if vals else None,
            "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None, "per_seed": per_seed}


def _train_seconds(run_dir: Path) -> float | None:
    import json

    try:
        return float(json.loads((run_dir / "metrics.json").read_text())["train_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _level_summary(ev: dict[str, Any], protocol: str, level: str) -> dict[str, Any] | None:
    return ((ev.get("protocols") or {}).get(protocol) or {}).get("levels", {}).get(level)


def sanity_rows(runs: dict[str, dict[int, SubRun]]) -> list[dict[str, Any]]:
    """Per sub-run, protocol and level: whether the sanity panel passed, and the checks that failed."""
    rows = []
    for v, by_seed in runs.items():
        for seed, run in sorted(by_seed.items()):
            for protocol, p in (run.eval.get("protocols") or {}).items():
                for level, s in p["levels"].items():
                    sanity = s.get("sanity")
                    failed = [f"{c['check']} {c.get('attack', '')} {c.get('norm', '')}".strip()
                              for c in (sanity or {}).get("checks", []) if not c.get("pass")]
                    rows.append({"variant": v, "seed": seed, "protocol": protocol, "level": level,
                                 "pass": None if sanity is None else bool(sanity.get("pass")), "failed": failed})
    return rows


def variant_rows(runs: dict[str, dict[int, SubRun]], measures: list[dict[str, Any]], headline_key: str | None,
                 primary: str, levels: Sequence[str]) -> list[dict[str, Any]]:
    """One row per variant, in paradigm order: accuracies with intervals, means over seeds of the rest."""
    by_key = {m["key"]: m for m in measures}
    csl_cfg = next((r.cfg for r in runs.get("csl", {}).values() if r.cfg is not None), None)
    order = sorted(runs, key=lambda v: PARADIGMS.index(variant_spec(v).paradigm))
    rows = []
    for v in order:
        by_seed = runs[v]
        spec = variant_spec(v)
        evs = {s: r.eval for s, r in sorted(by_seed.items())}
        per_level = {}
        for lvl in levels:
            head = by_key.get(headline_key.replace(f"/{primary}/", f"/{lvl}/", 1)) if headline_key else None
            corr = [(_level_summary(e, "standard", lvl) or {}).get("corruptions") for e in evs.values()]
            per_level[lvl] = {
                "clean": next((m["clean"].get(v) for m in measures if m["protocol"] == "standard"
                               and m["level"] == lvl), None),
                "robust": None if head is None else head["accuracy"].get(v),
                "corruption_mean": _mean([c["mean"] if c else None for c in corr])}
        rep = {k: _spread({s: (e.get("representation") or {}).get(k) for s, e in evs.items()}) for k in REPRESENTATION}
        det = [e.get("fn_detector_stats") or {} for e in evs.values()]
        cfg = next((r.cfg for r in by_seed.values() if r.cfg is not None), None)
        families: dict[str, list[float]] = {}
        for e in evs.values():
            corr = (_level_summary(e, "standard", primary) or {}).get("corruptions") or {}
            for fam, acc in (corr.get("family_mean") or {}).items():
                families.setdefault(fam, []).append(acc)
        rows.append({
            "variant": v, "label": spec.label, "paradigm": spec.paradigm, "base": spec.base,
            "method": next(iter(evs.values())).get("method"), "fn_detector": next(iter(evs.values())).get("fn_detector"),
            "seeds": sorted(evs), "levels": per_level, "representation": rep,
            "corruption_family_mean": {f: float(np.mean(a)) for f, a in families.items()},
            "fn_precision": _mean([d.get("precision") for d in det]), "fn_recall": _mean([d.get("recall") for d in det]),
            "recipe_vs_csl": None if cfg is None or csl_cfg is None or v == "csl" else recipe_differences(cfg, csl_cfg),
            "eval_dirs": [str(r.run_dir / "eval") for _, r in sorted(by_seed.items())],
            "seconds": {"train": _mean([_train_seconds(r.run_dir) for r in by_seed.values()]),
                        "eval": _mean([e.get("seconds") for e in evs.values()])},
        })
    return rows


def analyse_track(name: str, config: str, runs: dict[str, dict[int, SubRun]], *, headline: dict[str, Any],
                  n_boot: int, level: float, seed: int = 0) -> dict[str, Any]:
    """The comparison of one track (see the module docstring); ``runs[variant][seed]`` are its sub-runs."""
    first = next(r for by_seed in runs.values() for r in by_seed.values())
    is_video = bool(first.eval.get("is_video"))
    levels = list(first.eval.get("levels") or (["clip", "video"] if is_video else ["image"]))
    primary = first.eval.get("primary_level") or levels[0]
    temps = temperatures(runs)
    comparisons = track_comparisons(list(runs), temps)
    paired = PairedOutcomes(runs, n_boot=n_boot, level=level, seed=seed)
    measures = [analyse_measure(paired, m, comparisons) for m in measures_of(runs)]
    head = {"attack": first.eval.get("robust_attack", "pgd"), **headline}
    eps = head["eps"] / 255 if head["norm"] == "linf" else head["eps"]
    headline_key = outcome_key("standard", primary, head["attack"], norm=head["norm"], eps=eps)
    questions = answer_questions(track_questions(comparisons, measures, levels), measures, head, primary)
    rows = variant_rows(runs, measures, headline_key if any(m["key"] == headline_key for m in measures) else None,
                        primary, levels)
    rep = {r["variant"]: r["representation"]["uniformity"] for r in rows}
    questions += representation_questions(rep, list(runs), temps, level)
    cfgs = {v: next((r.cfg for r in runs[v].values() if r.cfg is not None), None) for v in ("sl", "csl") if v in runs}
    sharing = budget_sharing(cfgs["sl"], cfgs["csl"]) if all(cfgs.get(v) is not None for v in ("sl", "csl")) else None
    return {"track": name, "config": config, "is_video": is_video, "levels": levels, "primary_level": primary,
            "num_classes": first.eval.get("num_classes"), "split": first.eval.get("split"),
            "n_samples": max(len(r.outcomes) for by_seed in runs.values() for r in by_seed.values()),
            "seeds": sorted({s for by_seed in runs.values() for s in by_seed}),
            "headline": {**head, "key": headline_key}, "temperatures": temps,
            "comparisons": [{"id": c.id, "kind": c.kind, "a": c.a, "b": c.b, "statistic": c.describe()}
                            for c in comparisons],
            "variants": rows, "measures": measures, "questions": questions, "sanity": sanity_rows(runs),
            "budget_sharing": sharing, "eval_settings": first.eval.get("eval_config"),
            "attacks": first.eval.get("attacks")}


def analyse_study(study: Any, jobs: Sequence[Any]) -> dict[str, Any]:
    """The study's comparison from its finished jobs (``vidcsl.robustness.study.Job``): every track whose
    sub-runs were evaluated, plus the settings of the statistics."""
    tracks = []
    for t in study.tracks:
        runs: dict[str, dict[int, SubRun]] = {}
        for j in jobs:
            if j.track.name == t.name:
                runs.setdefault(j.variant, {})[j.seed] = load_sub_run(j.variant, j.seed, j.run_dir, j.cfg)
        if runs:
            tracks.append(analyse_track(t.name, t.config, runs, n_boot=study.n_boot, level=study.confidence,
                                        headline={"norm": study.headline_norm, "eps": study.headline_eps}))
    return {"name": study.name, "source": study.source, "runs_dir": study.runs_dir, "seeds": study.seeds,
            "statistics": {"n_boot": study.n_boot, "confidence": study.confidence,
                           "resampling": "paired bootstrap over test samples and training seeds",
                           "rule": "resolved only where the interval excludes 0"},
            "headline": {"norm": study.headline_norm, "eps": study.headline_eps}, "tracks": tracks}
