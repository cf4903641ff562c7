"""What a config field accepts, declared next to the field: allowed strings, numeric domains, patterns.

The config loader (:mod:`vidcsl.config`) checks every value against its field's declaration when a config
is built, together with its type; :func:`check_fields` re-checks an instance built or changed in code.
A field without a declaration still gets one check: a float must be finite.

    lr: float = bounded(0.1, gt=0)                      # a finite number > 0
    grad_clip: float | None = bounded(None, gt=0)       # null allowed because the type allows it
    name: str = choices("sgd", "adamw", default="sgd")
    device: str = matching(r"auto|cpu|cuda(:\\d+)?", "auto | cpu | cuda | cuda:N", default="auto")

This module sits below every stage (it imports only :mod:`vidcsl.errors`), so any stage's dataclasses
can declare their fields with it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from vidcsl.errors import ConfigError


@dataclass(frozen=True)
class Domain:
    """The values a numeric key accepts: bounds (any of ``ge``/``gt``/``le``/``lt``) and finiteness.

    ``null`` is allowed exactly when the field's type allows it (``int | None``); a list field's domain
    applies to every element. Every float must be finite unless ``finite=False``.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    finite: bool = True

    def describe(self) -> str:
        parts = [f"{op} {bound if isinstance(bound, int) else format(bound, 'g')}"
                 for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if bound is not None]
        return " and ".join(parts) or "finite"

    def check(self, value: Any, key: str) -> None:
        """Raise :class:`ConfigError` naming ``key`` when ``value`` (a number, list of numbers or None) is outside."""
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                self.check(v, f"{key}[{i}]")
            return
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        ok = not (self.finite and not math.isfinite(value))
        ok = ok and (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
        ok = ok and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt)
        if not ok:
            raise ConfigError(f"config key '{key}' must be {self.describe()}, got {value!r}")


FINITE = Domain()  # what every float key accepts unless its field declares a domain


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None, finite: bool = True) -> Any:
    """A numeric field with a :class:`Domain`, checked when the config is built (a list default is copied)."""
    meta = {"domain": Domain(ge, gt, le, lt, finite)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def choices(*options: str, default: str) -> Any:
    """A string field restricted to ``options`` (checked when the config is built)."""
    return field(default=default, metadata={"choices": options})


def matching(pattern: str, described: str, *, default: str) -> Any:
    """A string field that must match the regular expression ``pattern`` whole (``described`` for messages)."""
    return field(default=default, metadata={"pattern": (re.compile(pattern), described)})


def check_field_value(f: dataclasses.Field, value: Any, key: str) -> Any:
    """``value`` if it lies in ``f``'s choices, pattern and domain (floats: finite by default), else ConfigError."""
    allowed = f.metadata.get("choices")
    if allowed and value not in allowed:
        raise ConfigError(f"config key '{key}' must be one of {allowed}, got {value!r}")
    pattern = f.metadata.get("pattern")
    if pattern and isinstance(value, str) and not pattern[0].fullmatch(value):
        raise ConfigError(f"config key '{key}' must be {pattern[1]}, got {value!r}")
    f.metadata.get("domain", FINITE).check(value, key)
    return value


def check_fields(obj: Any, prefix: str) -> None:
    """Check every declared field of the dataclass instance ``obj`` (and of nested ones), named ``prefix.field``."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value, f"{prefix}.{f.name}")
        else:
            check_field_value(f, value, f"{prefix}.{f.name}")
