"""A method's own settings: a small dataclass per method, given under ``method.options`` in the YAML.

Each method class names its settings dataclass in ``settings_class``; the fields carry their defaults
and their domains (``vidcsl.config.bounded`` / ``choices``), and the class docstring says what each
one means. ``vidcsl.config.validate_config`` reads them through :func:`read_settings` with the same
code that checks every other config key, so an unknown key, a wrong type or a value outside its domain
fails before training, naming the key:

    method:
      name: byol
      options:
        momentum: 0.99          # -> BYOL.settings_class.momentum, checked to lie in [0, 1)

Attack budgets may be written as fractions, as papers quote them (``eps: 8/255``). docs/methods.md
lists every method's settings with their defaults and the paper each comes from.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from vidcsl.errors import ConfigError

PREFIX = "method.options."


@dataclass
class NoSettings:
    """The settings of a method that has none of its own."""


def _fraction(value: Any, key: str) -> Any:
    """``"8/255"`` -> 8/255 for a float setting; anything else is left for the type check."""
    if not isinstance(value, str) or "/" not in value:
        return value
    try:
        return float(Fraction(value.replace(" ", "")))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"config key '{key}' expects a number or a fraction like '8/255', "
                          f"got {value!r}") from None


def _accepts_float(tp: Any) -> bool:
    return tp is float or float in typing.get_args(tp)


def read_settings(settings_class: type, options: dict[str, Any] | None, method: str) -> Any:
    """``options`` (the YAML's ``method.options``) as an instance of ``settings_class``, every key checked.

    Raises :class:`vidcsl.errors.ConfigError` naming ``method.options.<key>`` for an unknown key, a
    wrong type, or a value outside the field's choices or domain.
    """
    from vidcsl.config import _build  # the one key / type / domain check of the whole config

    raw = dict(options or {})
    fields = dataclasses.fields(settings_class)
    if raw and not fields:
        raise ConfigError(f"config key '{PREFIX}{next(iter(raw))}' is unknown: method {method!r} has no options")
    hints = typing.get_type_hints(settings_class)
    for key, value in raw.items():
        if key in hints and _accepts_float(hints[key]):
            raw[key] = _fraction(value, PREFIX + key)
    return _build(settings_class, raw, PREFIX)
