"""The measures of one evaluation, on a stream of batches: per-sample outcomes and representation metrics.

``run_measures`` walks the evaluation loader once. For every batch, every protocol's classifier and every
level (``image``; or ``clip`` and ``video`` for clip sets), it records one bool per sample for clean
accuracy, each attack sweep (every eps), AutoAttack at its eps, and each corruption and severity; the
representation metrics keep at most ``n_repr`` feature vectors. Nothing else outlives its batch, so memory
does not grow with the number of evaluated samples. ``summarise_level`` turns the outcomes into the accuracies,
corruption means and sanity checks of ``eval.json``. The protocols are described in ``docs/evaluation.md``.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vidcsl.attacks import ATTACKS, robust_sweep
from vidcsl.attacks.pgd import predicts
from vidcsl.errors import UsageError
from vidcsl.robustness.outcomes import OutcomeRecorder, Outcomes, outcome_key

Tensor = torch.Tensor
AUTOATTACK = "autoattack"
EMPTY_CORRUPTIONS: dict[str, Any] = {"n_samples": 0, "per_corruption": [], "corruption_mean": {}, "family_mean": {},
                                     "mean": None}


# ------------------------------------------------------------------------------------- the classifiers


class VideoLevel(nn.Module):
    """(B, K, C, T, H, W) -> (B, classes): ``classifier``'s logits averaged over the K clips of each video."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 6:
            raise UsageError(f"a video-level classifier takes clip sets (B, K, C, T, H, W), got {tuple(x.shape)}")
        b, k = x.shape[:2]
        return self.classifier(x.flatten(0, 1)).view(b, k, -1).mean(1)


def centre_clip(clips: Tensor) -> Tensor:
    """Clip ``K // 2`` of each clip set (the centre one of K uniform clips when K is odd)."""
    return clips[:, clips.shape[1] // 2]


def level_inputs(x: Tensor, levels: Sequence[str]) -> dict[str, Tensor]:
    """The input of each level a batch can feed: images -> ``image``; clip sets -> ``clip`` and ``video``."""
    if x.dim() == 4:
        return {"image": x}
    if x.dim() == 5:
        return {"clip": x} if "clip" in levels else {}
    if x.dim() == 6:
        out = {"clip": centre_clip(x), "video": x}
        return {k: v for k, v in out.items() if k in levels}
    raise UsageError(f"evaluation batches must be images, clips or clip sets, got shape {tuple(x.shape)}")


@torch.no_grad()
def correct(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Bool (B,) on CPU: the model's prediction is the label."""
    return predicts(model(x), y).cpu()


# --------------------------------------------------------------------------------- the attack adapters


def _autoattack(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str, n_classes: int, version: str,
                seed: int) -> Tensor:
    """AutoAttack's adversarial examples through the registry's call shape (torchattacks underneath)."""
    return ATTACKS[AUTOATTACK](model, x, y, eps=eps, norm=norm, n_classes=n_classes, version=version, seed=seed)


# ------------------------------------------------------------------------------------------- the plan


@dataclass
class Sweep:
    """One attack over one norm's eps list (pixel units); ``extra_eps`` are run for the sanity panel."""

    attack: str
    norm: str
    eps: list[float]
    extra_eps: list[float] = field(default_factory=list)

    def all_eps(self) -> list[float]:
        return sorted(set(self.eps) | set(self.extra_eps))


@dataclass
class MeasurePlan:
    """Everything ``run_measures`` measures; see ``vidcsl.robustness.evaluate.build_plan``."""

    classifiers: dict[str, nn.Module]  # protocol -> pixels (images / single clips) -> logits
    levels: list[str]
    sweeps: list[Sweep]
    num_classes: int
    steps: int = 20
    alpha_factor: float = 2.5
    random_start: bool = True
    restarts: int = 1
    autoattack: dict[str, Any] | None = None  # {"norm", "eps", "version"}: images only
    corruptions: list[str] = field(default_factory=list)
    severities: list[int] = field(default_factory=list)
    n_corruption: int | None = None
    video_measures: tuple[str, ...] = ("attacks", "corruptions")
    sanity_eps: dict[str, float] = field(default_factory=dict)  # norm -> large eps (pixel units)
    sanity_max_acc: float = 0.02
    seed: int = 0

    def runs_at(self, measure: str, level: str) -> bool:
        return level != "video" or measure in self.video_measures


class RepresentationAccumulator:
    """Representation metrics of ``encoder`` (vidcsl.robustness.metrics) on the first ``n`` samples, streamed.

    Keeps the L2-normalised features of at most ``n`` samples and ``n`` augmented pairs; sensitivity is the
    per-batch ratio averaged weighted by batch size.
    """

    def __init__(self, encoder: nn.Module, n: int, *, eps: float, steps: int, seed: int, device: torch.device):
        self.encoder, self.n, self.eps, self.steps, self.device = encoder, n, eps, steps, device
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.z: list[Tensor] = []
        self.y: list[Tensor] = []
        self.pairs: list[tuple[Tensor, Tensor]] = []
        self.sens = {"random": 0.0, "adversarial": 0.0}
        self.seen = 0
        self.seen_pairs = 0

    @torch.no_grad()
    def _embed(self, x: Tensor) -> Tensor:
        return F.normalize(self.encoder(x.to(self.device)).flatten(1).float(), dim=1).cpu()

    def add(self, x: Tensor, y: Tensor) -> None:
        """A batch of single-view inputs (images or single clips) on the device."""
        from vidcsl.robustness.metrics import sensitivity

        take = min(x.shape[0], self.n - self.seen)
        if take <= 0:
            return
        x = x[:take]
        self.z.append(self._embed(x))
        self.y.append(y[:take].cpu())
        for kind in self.sens:
            self.sens[kind] += take * sensitivity(self.encoder, x, eps=self.eps, kind=kind, steps=self.steps,
                                                  generator=self.gen)
        self.seen += take

    def add_pairs(self, x1: Tensor, x2: Tensor) -> None:
        take = min(x1.shape[0], self.n - self.seen_pairs)
        if take > 0:
            self.pairs.append((self._embed(x1[:take]), self._embed(x2[:take])))
            self.seen_pairs += take

    def result(self) -> dict[str, Any]:
        from vidcsl.robustness.metrics import alignment, class_distance_ratio, uniformity

        if self.seen < 2 or self.seen_pairs < 1:
            raise UsageError(f"representation metrics need >= 2 samples and one augmented pair, got {self.seen} "
                             f"and {self.seen_pairs}")
        z, y = torch.cat(self.z), torch.cat(self.y)
        z1, z2 = (torch.cat([p[i] for p in self.pairs]) for i in (0, 1))
        try:
            ratio = class_distance_ratio(z, y)
        except ValueError:  # too few samples for a same-class and a different-class pair
            ratio = math.nan
        return {"n_samples": self.seen, "n_pairs": self.seen_pairs, "alignment": alignment(z1, z2),
                "uniformity": uniformity(z), "inter_intra_ratio": ratio,
                "sensitivity_random": self.sens["random"] / self.seen,
                "sensitivity_adversarial": self.sens["adversarial"] / self.seen,
                "sensitivity_eps_255": self.eps * 255, "cosine_hist": cosine_histogram(z)}


def cosine_histogram(z: Tensor, bins: int = 40) -> dict[str, list[float]]:
    """Histogram of pairwise cosine similarities (a != b) of normalised ``z``: how spread the representation is."""
    n = z.shape[0]
    cos = (z @ z.t())[~torch.eye(n, dtype=torch.bool)].clamp(-1, 1)
    counts = torch.histc(cos, bins=bins, min=-1.0, max=1.0)
    edges = torch.linspace(-1, 1, bins + 1)
    return {"edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]}


# ------------------------------------------------------------------------------------------ the stream


def _generator(device: torch.device, seed: int, name: str) -> torch.Generator:
    """A generator per stream of random starts, seeded from the evaluation seed and the stream's name."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def _corrupt(x: Tensor, name: str, severity: int, seed: int) -> Tensor:
    """A corruption of images, clips or clip sets (each clip of a set corrupted as its own clip)."""
    from vidcsl.robustness.corruptions import corrupt

    if x.dim() == 6:
        return corrupt(x.flatten(0, 1), name, severity, seed=seed).view_as(x)
    return corrupt(x, name, severity, seed=seed)


@torch.no_grad()
def correct_per_level(classifier: nn.Module, x: Tensor, y: Tensor, levels: Sequence[str]) -> dict[str, Tensor]:
    """Bool (B,) per level from one forward pass per clip: for clip sets the clip level reads the centre clip's
    logits and the video level their mean over the K clips (clips are run only when the video level is asked)."""
    if x.dim() != 6:
        return {level: correct(classifier, x, y) for level in levels[:1]}
    if "video" not in levels:
        return {"clip": correct(classifier, centre_clip(x), y)}
    b, k = x.shape[:2]
    logits = classifier(x.flatten(0, 1)).view(b, k, -1)
    out = {"clip": predicts(logits[:, k // 2], y).cpu(), "video": predicts(logits.mean(1), y).cpu()}
    return {level: out[level] for level in levels}


def _measure_protocol(rec: OutcomeRecorder, plan: MeasurePlan, gens: dict[str, torch.Generator], protocol: str,
                      classifier: nn.Module, x: Tensor, x_cpu: Tensor, y: Tensor, start: int, n_corr: int) -> None:
    """Every measure of one protocol on one batch (samples ``start ..``), at every level the batch feeds."""
    inputs = level_inputs(x, plan.levels)
    clean = correct_per_level(classifier, x, y, list(inputs))
    for level, ok in clean.items():
        rec.add(outcome_key(protocol, level, "clean"), ok, start)
    for level, xin in inputs.items():
        if not plan.runs_at("attacks", level):
            continue
        model = VideoLevel(classifier) if level == "video" else classifier
        key = functools.partial(outcome_key, protocol, level)
        for sw in plan.sweeps:
            name = f"{protocol}/{level}/{sw.attack}/{sw.norm}"
            gen = gens.setdefault(name, _generator(x.device, plan.seed, name))
            res = robust_sweep(model, xin, y, norm=sw.norm, eps_list=sw.all_eps(), attack=sw.attack,
                               steps=plan.steps, alpha_factor=plan.alpha_factor, random_start=plan.random_start,
                               restarts=plan.restarts, generator=gen, clean=clean[level])
            for eps, ok in res.items():
                rec.add(key(sw.attack, norm=sw.norm, eps=eps), ok, start)
        aa = plan.autoattack
        if aa is not None and level == "image":
            adv = _autoattack(model, xin, y, eps=aa["eps"], norm=aa["norm"], n_classes=plan.num_classes,
                              version=aa["version"], seed=plan.seed)
            rec.add(key(AUTOATTACK, norm=aa["norm"], eps=aa["eps"]), correct(model, adv, y), start)
    levels = [lvl for lvl in inputs if plan.runs_at("corruptions", lvl)]
    if n_corr <= 0 or not plan.corruptions or not levels:
        return
    source = x_cpu[:n_corr] if "video" in levels else level_inputs(x_cpu[:n_corr], levels)[levels[0]]
    for name in plan.corruptions:
        for sev in plan.severities:
            xc = _corrupt(source, name, sev, seed=plan.seed + start).to(x.device)
            for level, ok in correct_per_level(classifier, xc, y[:n_corr], levels).items():
                rec.add(outcome_key(protocol, level, "corruption", corruption=name, severity=sev), ok, start)


def run_measures(batches: Iterable[Any], plan: MeasurePlan, device: torch.device, *,
                 representation: RepresentationAccumulator | None = None, progress: bool = True,
                 total: int | None = None) -> OutcomeRecorder:
    """Measure every batch ``(x, y, dataset_index)`` of ``batches``; returns the recorded outcomes.

    ``representation`` (if given) sees the single-view input of each batch (the image, or the centre clip).
    Corruptions of a clip set are drawn once for both levels (the clip level reads its centre clip).
    """
    rec = OutcomeRecorder()
    gens: dict[str, torch.Generator] = {}
    for batch in tqdm(batches, desc="evaluate", total=total, disable=not progress, leave=False):
        if batch is None:  # every sample of the batch was unreadable
            continue
        x_cpu, y_cpu = batch[0], torch.as_tensor(batch[1]).long()
        start = rec.n
        rec.add_samples(torch.as_tensor(batch[2]).tolist(), y_cpu.tolist())
        x, y = x_cpu.to(device), y_cpu.to(device)
        if not level_inputs(x, plan.levels):
            raise UsageError(f"no evaluation level fits batches of shape {tuple(x.shape)} (levels {plan.levels})")
        n_corr = x.shape[0] if plan.n_corruption is None else max(0, min(x.shape[0], plan.n_corruption - start))
        for protocol, classifier in plan.classifiers.items():
            _measure_protocol(rec, plan, gens, protocol, classifier, x, x_cpu, y, start, n_corr)
        if representation is not None:
            representation.add(centre_clip(x) if x.dim() == 6 else x, y)
    return rec


# --------------------------------------------------------------------------------------- the summaries


def _acc(outcomes: Outcomes, key: str) -> float | None:
    return outcomes.accuracy(key) if key in outcomes else None


def corruption_summary(outcomes: Outcomes, protocol: str, level: str, plan: MeasurePlan) -> dict[str, Any] | None:
    """Accuracy per corruption and severity, the mean per corruption, per family and over everything."""
    from vidcsl.robustness.corruptions import CORRUPTIONS

    rows = []
    for name in plan.corruptions:
        for sev in plan.severities:
            key = outcome_key(protocol, level, "corruption", corruption=name, severity=sev)
            if key in outcomes:
                rows.append({"name": name, "family": CORRUPTIONS[name].family, "severity": sev,
                             "acc": outcomes.accuracy(key), "n": int(outcomes[key].shape[0])})
    if not rows:
        return None
    mean = lambda v: float(sum(v) / len(v)) if v else math.nan  # noqa: E731
    per_name: dict[str, list[float]] = {}
    family: dict[str, list[float]] = {}
    for r in rows:
        per_name.setdefault(r["name"], []).append(r["acc"])
        family.setdefault(r["family"], []).append(r["acc"])
    return {"n_samples": rows[0]["n"], "per_corruption": rows,
            "corruption_mean": {k: mean(v) for k, v in per_name.items()},
            "family_mean": {k: mean(v) for k, v in family.items()}, "mean": mean([r["acc"] for r in rows])}


def _eps_entry(norm: str, eps: float, acc: float | None, n: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"eps": eps}
    if norm == "linf":
        entry["eps_255"] = round(eps * 255, 6)
    entry.update(acc=acc, n=n)
    return entry


def sanity_panel(outcomes: Outcomes, protocol: str, level: str, plan: MeasurePlan) -> dict[str, Any] | None:
    """Checks that expose gradient masking, each pass / fail with its numbers.

    * robust accuracy non-increasing in eps (over the sweep and the extra eps);
    * robust accuracy <= ``sanity_max_acc`` at the large eps of the norm;
    * AutoAttack <= the first sweep attack at AutoAttack's eps.
    """
    checks = []
    for sw in plan.sweeps:
        curve = []
        for eps in sw.all_eps():
            key = outcome_key(protocol, level, sw.attack, norm=sw.norm, eps=eps)
            if key in outcomes:
                curve.append([eps, outcomes.accuracy(key)])
        if not curve:
            continue
        accs = [a for _, a in curve]
        checks.append({"check": "non-increasing in eps", "attack": sw.attack, "norm": sw.norm, "curve": curve,
                       "pass": all(b <= a for a, b in zip(accs, accs[1:]))})
        large = plan.sanity_eps.get(sw.norm)
        if large is not None:
            acc = _acc(outcomes, outcome_key(protocol, level, sw.attack, norm=sw.norm, eps=large))
            if acc is not None:
                checks.append({"check": "near 0 at a large eps", "attack": sw.attack, "norm": sw.norm,
                               **_eps_entry(sw.norm, large, acc, len(outcomes)), "max_acc": plan.sanity_max_acc,
                               "pass": acc <= plan.sanity_max_acc})
    aa = plan.autoattack
    if aa is not None and plan.sweeps:
        ref = next((s for s in plan.sweeps if s.norm == aa["norm"]), None)
        a = _acc(outcomes, outcome_key(protocol, level, AUTOATTACK, norm=aa["norm"], eps=aa["eps"]))
        p = None if ref is None else _acc(outcomes, outcome_key(protocol, level, ref.attack, norm=aa["norm"],
                                                                eps=aa["eps"]))
        if a is not None and p is not None:
            checks.append({"check": f"autoattack <= {ref.attack}", "norm": aa["norm"],
                           **_eps_entry(aa["norm"], aa["eps"], a, len(outcomes)), "autoattack": a,
                           "reference": p, "pass": a <= p})
    if not checks:
        return None
    return {"checks": checks, "pass": all(c["pass"] for c in checks)}


def summarise_level(outcomes: Outcomes, protocol: str, level: str, plan: MeasurePlan) -> dict[str, Any] | None:
    """Accuracies of one protocol at one level, all computed from ``outcomes``."""
    clean_key = outcome_key(protocol, level, "clean")
    if clean_key not in outcomes:
        return None
    robust: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for sw in plan.sweeps:
        for eps in sw.eps:
            key = outcome_key(protocol, level, sw.attack, norm=sw.norm, eps=eps)
            if key in outcomes:
                robust.setdefault(sw.attack, {}).setdefault(sw.norm, []).append(
                    _eps_entry(sw.norm, eps, outcomes.accuracy(key), int(outcomes[key].shape[0])))
    aa = None
    if plan.autoattack is not None:
        key = outcome_key(protocol, level, AUTOATTACK, norm=plan.autoattack["norm"], eps=plan.autoattack["eps"])
        if key in outcomes:
            aa = {**_eps_entry(plan.autoattack["norm"], plan.autoattack["eps"], outcomes.accuracy(key),
                               int(outcomes[key].shape[0])), "norm": plan.autoattack["norm"],
                  "version": plan.autoattack["version"]}
    return {"n_samples": int(outcomes[clean_key].shape[0]), "clean_acc": outcomes.accuracy(clean_key),
            "robust": robust, "autoattack": aa, "corruptions": corruption_summary(outcomes, protocol, level, plan),
            "sanity": sanity_panel(outcomes, protocol, level, plan)}
