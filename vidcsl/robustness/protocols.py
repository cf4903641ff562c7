"""The evaluation protocols: which pixel classifier each one evaluates, and the linear probes they need.

* ``standard`` — linear evaluation. A supervised run is its own classifier (encoder + its trained linear
  layer); any other run is its frozen encoder + a linear probe on clean-BatchNorm features.
* ``adv_bn`` — ACL's evaluation (Jiang et al. 2020): the frozen encoder run through its adversarial
  BatchNorm branch, with a linear probe fit on that branch's features. Runs whose encoder has dual BN.
* ``robust_probe`` — RoCL's robust linear evaluation (Kim et al. 2020): the frozen encoder + a linear probe
  trained on PGD examples (L-inf, the attack maximising the cross-entropy of encoder + the probe being
  trained). Runs of an adversarial contrastive method.

Each probe lives in its own folder of the run (``probe/``, ``probe_adv_bn/``, ``probe_robust/``) and is
retrained when missing, older than the checkpoint, or trained with other settings than the evaluation asks
for (its ``probe.json`` records them). See ``docs/evaluation.md``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vidcsl.errors import ConfigError

Tensor = torch.Tensor
PROTOCOLS = ("standard", "adv_bn", "robust_probe")
PROBE_DIRS = {"standard": "probe", "adv_bn": "probe_adv_bn", "robust_probe": "probe_robust"}
DESCRIPTIONS = {
    "standard": "linear evaluation: frozen encoder + linear probe (a supervised run: its own classifier)",
    "adv_bn": "ACL's protocol: frozen encoder through its adversarial BatchNorm branch + a linear probe on it",
    "robust_probe": "RoCL's robust linear evaluation: frozen encoder + a linear probe trained on PGD examples",
}


class PixelClassifier(nn.Module):
    """``head(encoder(x))``: pixels in [0, 1] -> logits (what attacks and corruptions act on)."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


@dataclass
class Protocol:
    name: str
    classifier: nn.Module
    description: str
    probe: dict[str, Any] | None  # the probe's summary (None: a supervised run's own classifier)


def has_dual_bn(module: nn.Module) -> bool:
    from vidcsl.models.dual_bn import dual_bn_layers

    return bool(dual_bn_layers(module))


def not_applicable(protocol: str, method: nn.Module, supervised: bool) -> str | None:
    """Why ``protocol`` does not apply to a run (None when it does)."""
    from vidcsl.methods.adversarial import AdversarialSimCLR

    if protocol == "adv_bn" and not has_dual_bn(method.encoder):
        return "the encoder has no dual (adversarial) BatchNorm"
    if protocol == "robust_probe" and (supervised or not isinstance(method, AdversarialSimCLR)):
        return "robust linear evaluation is reported for adversarial contrastive methods"
    return None


def probe_overrides(ecfg: Any, is_video: bool, progress: bool) -> list[str]:
    """The config overrides a probe of this evaluation is trained with (its view protocol for videos)."""
    views = [f"data.eval_clips={ecfg.video_clips}", "data.eval_crops=1"] if is_video else []
    return [*ecfg.probe, *views, f"train.progress={str(progress).lower()}"]


def robust_probe_settings(ecfg: Any) -> dict[str, Any]:
    return {"robust": {"attack": "pgd", "norm": "linf", "eps_255": ecfg.robust_probe_eps_255,
                       "alpha_255": ecfg.robust_probe_alpha_255, "steps": ecfg.robust_probe_steps,
                       "epochs": ecfg.robust_probe_epochs, "n_train": ecfg.robust_probe_n_train,
                       "select": "clean validation accuracy"}}


def requested_settings(cfg: Any, ecfg: Any, protocol: str, is_video: bool) -> dict[str, Any]:
    """The ``settings`` a probe of ``protocol`` must have been trained with (``vidcsl.train.probe``)."""
    from vidcsl.config import apply_overrides, config_from_dict, config_to_dict
    from vidcsl.train.probe import probe_settings

    wanted = config_from_dict(apply_overrides(config_to_dict(cfg), probe_overrides(ecfg, is_video, False)))
    features = "adversarial_bn" if protocol == "adv_bn" else "clean_bn"
    extra = robust_probe_settings(ecfg) if protocol == "robust_probe" else None
    return probe_settings(wanted, is_video=is_video, features=features, extra=extra)


def _stale(probe_dir: Path, checkpoint: Path, settings: dict[str, Any]) -> str | None:
    """Why the probe in ``probe_dir`` cannot be used (None when it can)."""
    from vidcsl.train.probe import PROBE_FILE, SUMMARY_FILE

    clf, summary = probe_dir / PROBE_FILE, probe_dir / SUMMARY_FILE
    if not clf.is_file() or not summary.is_file():
        return "none trained yet"
    if summary.stat().st_mtime < checkpoint.stat().st_mtime:
        return "older than the checkpoint"
    try:
        stored = json.loads(summary.read_text()).get("settings")
    except ValueError:
        return "its probe.json is unreadable"
    if stored != settings:
        if not isinstance(stored, dict):
            return "trained before probes recorded their settings"
        diff = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        return f"trained with other settings ({', '.join(diff)})"
    return None


def load_probe_head(probe_dir: Path) -> tuple[nn.Module, dict[str, Any]]:
    from vidcsl.models.heads import LinearClassifier
    from vidcsl.train.checkpoint import load_checkpoint
    from vidcsl.train.probe import PROBE_FILE, SUMMARY_FILE

    state = load_checkpoint(probe_dir / PROBE_FILE)
    head = LinearClassifier(int(state["feature_dim"]), int(state["num_classes"]))
    head.load_state_dict(state["model"])
    summary = json.loads((probe_dir / SUMMARY_FILE).read_text())
    summary.pop("history", None)
    return head.eval(), summary


def ensure_probe(checkpoint: Path, run_dir: Path, protocol: str, cfg: Any, ecfg: Any, is_video: bool,
                 device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The probe ``protocol`` evaluates, trained first when missing or stale; its summary says why."""
    from vidcsl.train.probe import prepare_probe, run_probe, save_probe

    probe_dir = run_dir / PROBE_DIRS[protocol]
    settings = requested_settings(cfg, ecfg, protocol, is_video)
    why = _stale(probe_dir, checkpoint, settings)
    if why is not None:
        overrides = probe_overrides(ecfg, is_video, ecfg.progress)
        if protocol == "robust_probe":
            setup = prepare_probe(checkpoint, overrides, device=str(device))
            save_probe(setup, fit_robust_probe(setup, ecfg), probe_dir, robust_probe_settings(ecfg))
        else:
            run_probe(checkpoint, overrides, out_dir=probe_dir, device=str(device), adversarial_bn=protocol == "adv_bn")
    head, summary = load_probe_head(probe_dir)
    if summary.get("settings") != settings:  # what was just written must be what was asked for
        raise RuntimeError(f"probe in {str(probe_dir)!r} does not record the settings this evaluation asked for")
    summary["trained_now"] = why
    return head.to(device), summary


def fit_robust_probe(setup: Any, ecfg: Any) -> Any:
    """RoCL's robust linear evaluation: each batch is replaced by PGD examples against encoder + the probe
    being trained, then the probe steps on their features; selected on clean validation accuracy."""
    from torch.utils.data import Subset

    from vidcsl.attacks.pgd import pgd
    from vidcsl.train.probe import fit_probe, per_clip, view_features_of
    from vidcsl.train.trainer import make_loader

    cfg, dev = setup.cfg, setup.device
    ds = setup.data.train_eval
    n = ecfg.robust_probe_n_train
    if n is not None and n < len(ds):
        ds = Subset(ds, np.sort(np.random.default_rng(cfg.probe.seed).permutation(len(ds))[:n]).tolist())
    views, _ = view_features_of(setup, ds, "train features (statistics)")
    flat = views.flatten(0, 1)
    loader = make_loader(ds, cfg.probe.batch_size, cfg.data.num_workers, shuffle=True, seed=cfg.probe.seed)
    eps, alpha, steps = ecfg.robust_probe_eps_255 / 255, ecfg.robust_probe_alpha_255 / 255, ecfg.robust_probe_steps
    gen = torch.Generator(device=dev).manual_seed(cfg.probe.seed)

    def batches(epoch: int, current: nn.Module):
        model = PixelClassifier(setup.embed, current)
        for batch in loader:
            xy = per_clip(batch, setup.is_video)
            if xy is None:
                continue
            x, y = xy[0].to(dev), xy[1].to(dev)
            adv = pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, norm="linf", random_start=True,
                      generator=gen)
            with torch.no_grad():  # (not around the yield: grad mode would stay off in the caller)
                feats = setup.embed(adv).float()
            yield feats, y

    probe_cfg = copy.deepcopy(cfg.probe)
    if ecfg.robust_probe_epochs is not None:
        probe_cfg.epochs = ecfg.robust_probe_epochs
    return fit_probe(batches, flat.shape[1], setup.data.num_classes, setup.selection(setup.val), probe_cfg,
                     mean=flat.mean(0), std=flat.std(0).clamp_min(1e-6), test=setup.selection(setup.test),
                     device=dev, progress=cfg.train.progress)


def build_protocols(method: nn.Module, cfg: Any, checkpoint: Path, run_dir: Path, ecfg: Any, is_video: bool,
                    device: torch.device) -> tuple[dict[str, Protocol], dict[str, str]]:
    """The classifiers of every protocol ``ecfg.protocols`` asks for that applies to the run, and why the
    others were skipped. A supervised run takes no probe settings (it is its own classifier)."""
    from vidcsl.methods.base import method_class
    from vidcsl.train.probe import AdversarialBNEncoder

    # SL and SL-AT (supervised_at): a classifier of their own, evaluated as is
    supervised = method_class(cfg.method.name).own_classifier and hasattr(method, "classifier")
    if supervised and ecfg.probe:
        raise ConfigError(f"config key 'eval.probe' sets {ecfg.probe}, but {str(run_dir)!r} is a supervised run: "
                          "it is evaluated through its own classifier and trains no probe; remove them")
    out: dict[str, Protocol] = {}
    skipped: dict[str, str] = {}
    for name in ecfg.protocols:
        why = not_applicable(name, method, supervised)
        if why is not None:
            skipped[name] = why
            continue
        if name == "standard" and supervised:
            out[name] = Protocol(name, PixelClassifier(method.encoder, method.classifier).to(device).eval(),
                                 "supervised model: its own encoder and classifier", None)
            continue
        head, summary = ensure_probe(checkpoint, run_dir, name, cfg, ecfg, is_video, device)
        encoder = AdversarialBNEncoder(method.encoder) if name == "adv_bn" else method.encoder
        out[name] = Protocol(name, PixelClassifier(encoder, head).to(device).eval(), DESCRIPTIONS[name], summary)
    return out, skipped
