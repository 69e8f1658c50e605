"""Value checks shared by every config (and anything else that takes settings from a person): whole
numbers with bounds, finite numbers, strings, choices, true/false. Each returns the value or raises a
`ConfigError` naming the setting, so the Python API, the command line and the recipe files say the
same thing about the same bad value. A leaf: imports only `ragloop.errors`.

    >>> from ragloop.checks import whole, number, choice
    >>> whole(5, "--n_docs", low=1)
    5
    >>> whole(0, "--n_docs", low=1)
    Traceback (most recent call last):
    ragloop.checks.ConfigError: --n_docs must be at least 1 (got 0)
    >>> number(float("nan"), "--learning_rate", above=0)
    Traceback (most recent call last):
    ragloop.checks.ConfigError: --learning_rate must be a finite number (got nan)
    >>> choice("both", "mode", ("sequence", "token", "fid"))
    Traceback (most recent call last):
    ragloop.checks.ConfigError: mode: 'both' is not one of sequence, token, fid

Two kinds of error: a value of the wrong type or outside its choices (`kind="type"`: the value is not
one the setting can take at all) and a value out of range (`kind="range"`). `problem` is the message
without the setting's name, so a caller with its own vocabulary (a recipe file's `train.n_docs`)
can name the setting its way.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Collection
from typing import Any

from ragloop.errors import RagloopError


class ConfigError(RagloopError):
    """A bad setting: `name` (as the caller spells it), `problem` (what is wrong), `kind` ("type" or
    "range"). `message` replaces the default `name: problem` / `name problem` text where a config has
    a more telling one."""

    def __init__(self, name: str, problem: str, kind: str = "range", message: str | None = None) -> None:
        self.name, self.problem, self.kind = name, problem, kind
        super().__init__(message or (f"{name}: {problem}" if kind == "type" else f"{name} {problem}"))

    def renamed(self, name: str) -> ConfigError:
        """The same error naming the setting `name` (a config's field as its flag)."""
        return ConfigError(name, self.problem, self.kind)


def shown(value: Any) -> str:
    """A value as a person wrote it in JSON (`true`, `"two"`, `null`), else its repr."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _is_whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def whole(value: Any, name: str, low: int | None = None, high: int | None = None, optional: bool = False):
    """`value` as an int in [low, high] (a bool, a float or a string is refused); None if `optional`."""
    if value is None and optional:
        return None
    if not _is_whole(value):
        raise ConfigError(name, f"expected a whole number{' or null' if optional else ''}, got {shown(value)}",
                          "type")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bound = f"between {low} and {high}" if low is not None and high is not None else (
            f"at least {low}" if low is not None else f"at most {high}")
        raise ConfigError(name, f"must be {bound} (got {value})")
    return value


def number(value: Any, name: str, low: float | None = None, above: float | None = None,
           high: float | None = None, optional: bool = False):
    """`value` as a finite float, >= low, > above, <= high (NaN and infinities refused); None if
    `optional`."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(name, f"expected a number{' or null' if optional else ''}, got {shown(value)}", "type")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number (got {value})")
    if low is not None and value < low:
        raise ConfigError(name, f"must be at least {low:g} (got {value:g})")
    if above is not None and value <= above:
        raise ConfigError(name, f"must be > {above:g} (got {value:g})")
    if high is not None and value > high:
        raise ConfigError(name, f"must be at most {high:g} (got {value:g})")
    return value


def text(value: Any, name: str, optional: bool = False):
    """`value` as a string; None if `optional`."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ConfigError(name, f"expected a string{' or null' if optional else ''}, got {shown(value)}", "type")
    return value


def flag(value: Any, name: str) -> bool:
    """`value` as true or false (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise ConfigError(name, f"expected true or false, got {shown(value)}", "type")
    return value


def choice(value: Any, name: str, choices: Collection, message: str | None = None):
    """`value` if it is one of `choices`; `message` replaces the default text of the error."""
    if value not in choices:
        raise ConfigError(name, f"{value!r} is not one of {', '.join(map(str, choices))}", "type", message)
    return value
