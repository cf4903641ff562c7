"""Scalar logs of a run: one long-format CSV (``metrics.csv``) and TensorBoard, rank 0 only.

The CSV has one row per scalar (``step,epoch,name,value``) so new metrics never change the header.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any


class RunLogger:
    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._writer = None
        self._file = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.csv"
        new = not path.exists()
        self._file = open(path, "a", newline="")
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
        for name, value in scalars.items():
            value = float(value)
            self._csv.writerow([step, "" if epoch is None else epoch, name, repr(value)])
            if self._writer is not None and math.isfinite(value):
                self._writer.add_scalar(name, value, step)
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
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

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(clean(obj), indent=2) + "\n")
