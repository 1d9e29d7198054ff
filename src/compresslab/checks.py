"""Config value checks that fail before any training, with the key, the value and the allowed range."""

from __future__ import annotations

import numbers

from compresslab.errors import ConfigError


def number(value, key: str, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
           integer: bool = False):
    """Return `value` if it is a number within the bounds; raise ConfigError naming `key` otherwise."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{key}={value!r} must be {'an integer' if integer else 'a number'}")
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if too_low or too_high:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        bounds = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ConfigError(f"{key}={value!r} is out of range: it must be in {bounds}")
    return value


def choice(value, key: str, options) -> str:
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not one of {sorted(options)}")
    return value
