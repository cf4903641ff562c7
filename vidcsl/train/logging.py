"""Scalar logs of a run: one long-format CSV (``metrics.csv``) and TensorBoard, rank 0 only.

The CSV has one row per scalar (``step,epoch,name,value``) so new metrics never change the header.
A write that fails (read-only folder, full disk) raises :class:`vidcsl.errors.RunFolderError` naming the
file; JSON results are replaced atomically, so an interrupted write never leaves half a file.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from vidcsl.train.run_folder import replacing, writing


class RunLogger:
    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._writer = None
        self._file = None
        if not enabled:
            return
        self.path = self.run_dir / "metrics.csv"
        with writing(self.path, "write the metrics"):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            self._file = open(self.path, "a", newline="")
            self._csv = csv.writer(self._file)
            if new:
                self._csv.writerow(["step", "epoch", "name", "value"])
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:  # tensorboard missing: the CSV still has everything
                self._writer = None

    def log(self, step: int, scalars: dict[str, float], *, epoch: int | None = None) -> None:
        if not self.enabled:
            return
        with writing(self.path, "write the metrics"):
            for name, value in scalars.items():
                value = float(value)
                self._csv.writerow([step, "" if epoch is None else epoch, name, repr(value)])
                if self._writer is not None and math.isfinite(value):
                    self._writer.add_scalar(name, value, step)
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError:  # the failed flush was reported when it happened
                pass
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.csv`` as dicts (value as float)."""
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return [{**row, "value": float(row["value"]), "step": int(row["step"])} for row in csv.DictReader(f)]


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Readable JSON (NaN written as null)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    write_text_atomic(path, json.dumps(clean(obj), indent=2) + "\n")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` whole or not at all; RunFolderError naming it if the write fails."""
    with writing(path), replacing(path, "w") as f:
        f.write(text)
