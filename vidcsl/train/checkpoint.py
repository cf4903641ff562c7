"""Checkpoints that ``torch.load(weights_only=True)`` can read, written atomically, plus preemption.

A checkpoint holds only tensors and primitive containers: model / optimiser / scheduler / scaler state,
every RNG state as tensors (python, numpy, torch, cuda), the progress (epoch, step within the epoch,
global step) and the config as a plain dict. Loading always uses ``weights_only=True``, so a file
holding a pickled arbitrary object is refused instead of executed. A checkpoint is "good" only if every
floating-point tensor in it is finite: one holding NaN / inf is neither written nor loaded.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidcsl.errors import CheckpointError, RunFolderError
from vidcsl.train.run_folder import describe_os_error, replacing

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` whole or not at all (a temporary file renamed over it).

    A state holding a NaN / inf tensor is refused (:class:`CheckpointError`); a failed write (read-only
    folder, full disk) raises :class:`vidcsl.errors.RunFolderError` and leaves a previous file at ``path``
    as it was.
    """
    path = Path(path)
    bad = non_finite_entries(state)
    if bad:
        raise CheckpointError(f"refusing to write checkpoint {str(path)!r}: non-finite values in {_listed(bad)}")
    try:
        with replacing(path) as f:
            torch.save(state, f)
    except OSError as err:
        kept = "; the previous checkpoint is intact" if path.is_file() else ""
        raise RunFolderError(f"cannot write checkpoint {str(path)!r}: {describe_os_error(err)}{kept}") from None
    return path


def non_finite_entries(state: Any, prefix: str = "") -> list[str]:
    """Dotted keys of the floating-point tensors in a (nested) state that hold NaN or inf."""
    if isinstance(state, torch.Tensor):
        floating = state.is_floating_point() or state.is_complex()
        return [prefix or "tensor"] if floating and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    return [key for k, v in items for key in non_finite_entries(v, f"{prefix}.{k}" if prefix else str(k))]


def _listed(keys: list[str], limit: int = 5) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(repr(k) for k in keys[:limit]) + more


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``; raises :class:`CheckpointError` for a missing or unreadable file, a
    file with pickled objects, and a checkpoint holding NaN / inf (the state of a diverged run)."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if not zipfile.is_zipfile(path):  # not what torch.save writes: garbage or a truncated file
            raise CheckpointError(f"checkpoint {str(path)!r} is not a readable torch checkpoint (not the zip "
                                  f"archive torch.save writes: truncated or another format?)") from None
        raise CheckpointError(f"checkpoint {str(path)!r} holds objects other than tensors and plain containers; "
                              f"refusing to unpickle it (weights_only=True). Details: {str(err).splitlines()[0]}"
                              ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a readable torch checkpoint: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a vidcsl checkpoint (no 'model' entry)")
    bad = non_finite_entries(state)
    if bad:
        raise CheckpointError(f"checkpoint {str(path)!r} holds non-finite values (NaN or inf) in {_listed(bad)}: "
                              f"it is the state of a diverged run; use an earlier checkpoint or retrain")
    return state


def resolve_checkpoint(run_or_checkpoint: str | os.PathLike) -> Path:
    """A run folder (-> its ``checkpoints/last.pt``) or a checkpoint file; raises CheckpointError if absent."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT_DIR / LAST
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    return path


def check_state_fits(module: torch.nn.Module, state: dict[str, Any], source: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` listing missing / unexpected keys and shape mismatches between a
    checkpoint's ``state`` (a state dict) and ``module``, instead of load_state_dict's traceback."""
    own = module.state_dict()
    problems = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
                if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems += [f"{k}: missing from the checkpoint" for k in missing]
    problems += [f"{k}: not in the model" for k in unexpected]
    if problems:
        raise CheckpointError(f"checkpoint {str(source)!r} does not fit the model its config builds "
                              f"({len(problems)} differences): " + "; ".join(problems[:6])
                              + ("; ..." if len(problems) > 6 else ""))


# ----------------------------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors (python's and numpy's Mersenne Twister states are int64 vectors)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": torch.tensor([version, *mt], dtype=torch.int64),
        "python_gauss": torch.tensor([] if gauss is None else [gauss], dtype=torch.float64),
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_extra": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([cached], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"].tolist()
    gauss = state["python_gauss"].tolist()
    random.setstate((py[0], tuple(py[1:]), gauss[0] if gauss else None))
    pos, has_gauss = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), pos, has_gauss,
                         float(state["numpy_gauss"][0])))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"].cpu()
        if cuda.shape[0] == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(list(cuda))


# ------------------------------------------------------------------------------------------ preemption


class Preemption:
    """Context manager: SIGTERM / SIGINT set ``requested`` instead of killing the process.

    The trainer polls it at each step boundary, saves a checkpoint and exits; a second signal while a
    save is pending restores the default handler's behaviour (so a stuck run can still be stopped).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second signal: give up gracefully waiting
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> Preemption:
        try:
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: signals cannot be caught here
            self._old.clear()
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


# ------------------------------------------------------------------------------------- trained models


def load_trained_method(run_or_checkpoint: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild the trained :class:`vidcsl.methods.base.Method` of a run -> ``(method, cfg, state)``.

    ``method.encoder`` is the backbone; a supervised run also has ``method.classifier``. The method is
    returned in eval mode on ``map_location``. A checkpoint that is unreadable, non-finite, lacks its
    config or does not fit the model its config builds raises :class:`CheckpointError`.
    """
    from vidcsl.config import config_from_dict
    from vidcsl.errors import ConfigError
    from vidcsl.methods.base import build_method

    path = resolve_checkpoint(run_or_checkpoint)
    state = load_checkpoint(path, map_location)
    if "config" not in state or "num_classes" not in state:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks its config or num_classes; was it written by vidcsl?")
    try:
        cfg = config_from_dict(state["config"])
    except ConfigError as err:
        raise CheckpointError(f"checkpoint {str(path)!r} stores a config that is not valid: {err}") from None
    method = build_method(cfg, build_encoder_of(cfg), int(state["num_classes"]))
    check_state_fits(method, state["model"], path)
    method.load_state_dict(state["model"])
    return method.to(map_location).eval(), cfg, state


def build_encoder_of(cfg: Any) -> torch.nn.Module:
    """The encoder ``cfg.model`` names; options its builder does not take raise :class:`ConfigError`."""
    from vidcsl.errors import ConfigError
    from vidcsl.models.registry import build_encoder

    try:
        return build_encoder(cfg.model.encoder, **cfg.model.encoder_kwargs)
    except ValueError as err:  # the registry's message names the encoder and the options
        raise ConfigError(f"config keys 'model.encoder' / 'model.encoder_kwargs': {err}") from None


# Keys of a stored config an evaluation may override; any other override could not take effect (the
# model is already trained), so it is refused instead of silently ignored.
EVAL_OVERRIDABLE = ("data.", "probe.", "train.knn_k", "train.knn_temperature", "train.progress", "train.device",
                    "train.seed")


def load_for_evaluation(run_or_checkpoint: str | os.PathLike, overrides=(), device: str | None = None):
    """A run's trained method for probing / kNN -> ``(method, cfg, device)``.

    ``overrides`` (``probe.*``, data loading keys; see :data:`EVAL_OVERRIDABLE`) are applied to the stored
    config and checked; the method is in eval mode on ``device`` (default: the run's ``train.device``).
    """
    from vidcsl.config import apply_overrides, config_from_dict, config_to_dict, validate_config
    from vidcsl.errors import UsageError
    from vidcsl.train.distributed import select_device

    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if "=" in item and not key.startswith(EVAL_OVERRIDABLE):
            raise UsageError(f"override {item!r} cannot take effect on a trained run (only "
                             f"{', '.join(k + '*' if k.endswith('.') else k for k in EVAL_OVERRIDABLE)} apply)")
    method, cfg, _ = load_trained_method(run_or_checkpoint)
    cfg = config_from_dict(apply_overrides(config_to_dict(cfg), overrides))
    validate_config(cfg)
    dev = select_device(device or cfg.train.device, name="--device" if device else "config key 'train.device'")
    return method.to(dev).eval(), cfg, dev
