"""Checkpoints that ``torch.load(weights_only=True)`` can read, written atomically, plus preemption.

A checkpoint holds only tensors and primitive containers: model / optimiser / scheduler / scaler state,
every RNG state as tensors (python, numpy, torch, cuda), the progress (epoch, step within the epoch,
global step) and the config as a plain dict. Loading always uses ``weights_only=True``, so a file
holding a pickled arbitrary object is refused instead of executed.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` via a temporary file and ``os.replace`` (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``; a missing file or a file with pickled objects raises ValueError."""
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"checkpoint {str(path)!r} holds objects other than tensors and plain containers; "
                         f"refusing to unpickle it (weights_only=True). Details: {str(err).splitlines()[0]}") from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"checkpoint {str(path)!r} is not a readable torch checkpoint: {err}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"checkpoint {str(path)!r} is not a vidcsl checkpoint (no 'model' entry)")
    return state


def resolve_checkpoint(run_or_checkpoint: str | os.PathLike) -> Path:
    """A run folder (-> its ``checkpoints/last.pt``) or a checkpoint file; raises ValueError if absent."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        path = path / CHECKPOINT_DIR / LAST
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    return path


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
    returned in eval mode on ``map_location``.
    """
    from vidcsl.config import config_from_dict
    from vidcsl.methods.base import build_method
    from vidcsl.models.registry import build_encoder

    path = resolve_checkpoint(run_or_checkpoint)
    state = load_checkpoint(path, map_location)
    if "config" not in state or "num_classes" not in state:
        raise ValueError(f"checkpoint {str(path)!r} lacks its config or num_classes; was it written by vidcsl?")
    cfg = config_from_dict(state["config"])
    encoder = build_encoder(cfg.model.encoder, **cfg.model.encoder_kwargs)
    method = build_method(cfg, encoder, int(state["num_classes"]))
    method.load_state_dict(state["model"])
    return method.to(map_location).eval(), cfg, state


def load_for_evaluation(run_or_checkpoint: str | os.PathLike, overrides=(), device: str | None = None):
    """A run's trained method for probing / kNN -> ``(method, cfg, device)``.

    ``overrides`` (``probe.*``, data loading keys) are applied to the stored config and checked; the
    method is in eval mode on ``device`` (default: the run's ``train.device``).
    """
    from vidcsl.config import apply_overrides, config_from_dict, config_to_dict, validate_config
    from vidcsl.train.distributed import select_device

    method, cfg, _ = load_trained_method(run_or_checkpoint)
    cfg = config_from_dict(apply_overrides(config_to_dict(cfg), overrides))
    validate_config(cfg)
    dev = select_device(device or cfg.train.device)
    return method.to(dev).eval(), cfg, dev
