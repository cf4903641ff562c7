"""Per-sample outcomes of an evaluation: one bool per evaluated sample for every measure.

Every summary accuracy of ``eval.json`` is computed from these, and a study pairs two models sample by
sample through them (the models of a study track evaluate the same seeded subset of the same split).
The format is described in ``docs/evaluation.md``; in short, ``RUN/eval/outcomes.npz`` holds

* ``index``: int64 (N,) dataset indices, into the evaluated split, of the evaluated samples, in order;
* ``label``: int64 (N,) their labels;
* one bool array per outcome key, of length n <= N: element j is "still correct" for sample ``index[j]``
  (measures run on fewer samples, e.g. corruptions on ``n_corruption``, cover the first n);
* ``__meta__``: a JSON string (schema version, split, and each key's parsed fields).

Keys read ``protocol/level/measure...``::

    standard/clip/clean
    standard/video/pgd/linf/eps_255=2          (L-inf eps in units of 1/255)
    adv_bn/image/pgd/l2/eps=0.25                (L2 eps in [0, 1] pixel units)
    standard/image/autoattack/linf/eps_255=8
    robust_probe/clip/corruption/gaussian_noise/severity=3
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vidcsl.errors import UsageError

SCHEMA = 1
FILE_NAME = "outcomes.npz"
_RESERVED = ("index", "label", "__meta__")


def eps_tag(norm: str, eps: float) -> str:
    """``eps_255=2`` for L-inf (eps in units of 1/255), ``eps=0.25`` for L2 (eps in pixel units)."""
    if norm == "linf":
        return f"eps_255={round(eps * 255, 6):g}"
    return f"eps={round(eps, 9):g}"


def outcome_key(protocol: str, level: str, measure: str, *, norm: str | None = None, eps: float | None = None,
                corruption: str | None = None, severity: int | None = None) -> str:
    """The readable key of one measure: ``clean``, an attack name (with norm and eps) or ``corruption``."""
    parts = [protocol, level, measure]
    if measure == "corruption":
        parts += [str(corruption), f"severity={severity}"]
    elif measure != "clean":
        parts += [str(norm), eps_tag(str(norm), float(eps))]
    return "/".join(parts)


def parse_key(key: str) -> dict[str, Any]:
    """The fields of a key made by :func:`outcome_key` (eps always in pixel units, plus ``eps_255`` for L-inf)."""
    parts = key.split("/")
    if len(parts) < 3:
        raise UsageError(f"outcome key {key!r} does not read protocol/level/measure")
    out: dict[str, Any] = {"protocol": parts[0], "level": parts[1], "measure": parts[2]}
    if parts[2] == "corruption" and len(parts) == 5:
        out.update(corruption=parts[3], severity=int(parts[4].split("=", 1)[1]))
    elif parts[2] != "clean" and len(parts) == 5:
        name, value = parts[4].split("=", 1)
        out["norm"] = parts[3]
        if name == "eps_255":
            out.update(eps_255=float(value), eps=float(value) / 255)
        else:
            out["eps"] = float(value)
    elif len(parts) != 3:
        raise UsageError(f"outcome key {key!r} is not one vidcsl writes")
    return out


@dataclass
class Outcomes:
    """Dataset indices and labels of the evaluated samples plus ``{key: bool array}`` (see the module doc)."""

    index: np.ndarray
    label: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = np.asarray(self.index, dtype=np.int64)
        self.label = np.asarray(self.label, dtype=np.int64)
        if self.index.shape != self.label.shape or self.index.ndim != 1:
            raise UsageError(f"outcomes need one label per index, got {self.index.shape} and {self.label.shape}")
        for key, ok in list(self.values.items()):
            self.values[key] = self._checked(key, ok)

    def _checked(self, key: str, ok: Any) -> np.ndarray:
        ok = np.asarray(ok)
        if key in _RESERVED or ok.dtype != np.bool_ or ok.ndim != 1 or ok.shape[0] > self.index.shape[0]:
            raise UsageError(f"outcome {key!r} must be a bool vector of at most {self.index.shape[0]} samples, "
                             f"got {ok.dtype} {ok.shape}")
        return ok

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.values:
            raise UsageError(f"no outcome {key!r}; known: {', '.join(self.values) or 'none'}")
        return self.values[key]

    def keys(self, prefix: str = "") -> list[str]:
        return [k for k in self.values if k.startswith(prefix)]

    def accuracy(self, key: str) -> float:
        """Fraction correct as hits / n (n: the samples this measure ran on)."""
        ok = self[key]
        return float(ok.sum()) / ok.shape[0] if ok.shape[0] else float("nan")

    def samples(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(dataset indices, outcomes) of one measure."""
        ok = self[key]
        return self.index[: ok.shape[0]], ok

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"schema": SCHEMA, **self.meta, "keys": {k: parse_key(k) for k in self.values}}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, index=self.index, label=self.label, __meta__=np.array(json.dumps(meta)),
                            **self.values)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Outcomes:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"no outcomes file {str(path)!r} (evaluate the run first)")
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            values = {k: z[k] for k in z.files if k not in _RESERVED}
            return cls(z["index"], z["label"], values, {k: v for k, v in meta.items() if k != "keys"})


def paired(a: Outcomes, b: Outcomes, key: str, key_b: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outcomes of two evaluations on their common samples: (dataset indices, ok_a, ok_b), sorted by index."""
    ia, oa = a.samples(key)
    ib, ob = b.samples(key_b or key)
    common, pa, pb = np.intersect1d(ia, ib, assume_unique=True, return_indices=True)
    return common, oa[pa], ob[pb]


class OutcomeRecorder:
    """Collects outcomes batch by batch (only bools and indices are kept: memory grows by bits per sample)."""

    def __init__(self) -> None:
        self._index: list[np.ndarray] = []
        self._label: list[np.ndarray] = []
        self._values: dict[str, list[np.ndarray]] = {}
        self._counts: dict[str, int] = {}
        self.n = 0

    def add_samples(self, index: Iterable[int], label: Iterable[int]) -> None:
        index, label = np.asarray(list(index), np.int64), np.asarray(list(label), np.int64)
        self._index.append(index)
        self._label.append(label)
        self.n += index.shape[0]

    def add(self, key: str, ok: Any, start: int) -> None:
        """Outcomes of the samples at positions ``start .. start + len(ok)`` (must follow on the key's last)."""
        ok = np.asarray(ok.cpu() if hasattr(ok, "cpu") else ok, dtype=np.bool_).reshape(-1)
        have = self._counts.get(key, 0)
        if start != have:
            raise UsageError(f"outcome {key!r}: samples {start}.. recorded after {have} (they must be contiguous)")
        self._values.setdefault(key, []).append(ok)
        self._counts[key] = have + ok.shape[0]

    def result(self, meta: dict[str, Any] | None = None) -> Outcomes:
        cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)  # noqa: E731
        values = {k: np.concatenate(v) for k, v in self._values.items()}
        return Outcomes(cat(self._index), cat(self._label), values, dict(meta or {}))


def iter_keys(outcomes: Outcomes, **fields: Any) -> Iterator[str]:
    """Keys whose parsed fields match ``fields`` (e.g. ``protocol="standard", measure="pgd"``)."""
    for key in outcomes.values:
        parsed = parse_key(key)
        if all(parsed.get(k) == v for k, v in fields.items()):
            yield key
