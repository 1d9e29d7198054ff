"""Config value checks that fail before any training, with the key, the value and the allowed range.

One rule for numbers: a value must be a finite number (NaN and infinity pass no range check, since
every comparison with NaN is false) within its bounds; `finite_*` apply the same rule to what training
produces (losses, weights, metrics).
"""

from __future__ import annotations

import math
import numbers

from compresslab.errors import ConfigError

# numpy's seeding (which pl.seed_everything calls) takes unsigned 32-bit integers.
SEED_MAX = 2**32 - 1


def number(value, key: str, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
           integer: bool = False):
    """Return `value` if it is a finite number within the bounds; raise ConfigError naming `key` otherwise."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{key}={value!r} must be {'an integer' if integer else 'a number'}"
                          f"{_range(lo, hi, lo_open, hi_open, ' in ')}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number{_range(lo, hi, lo_open, hi_open, ' in ')}")
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if too_low or too_high:
        raise ConfigError(f"{key}={value!r} is out of range: it must be in {_range(lo, hi, lo_open, hi_open)}")
    return value


def _range(lo, hi, lo_open, hi_open, prefix: str = "") -> str:
    if lo is None and hi is None:
        return ""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    return f"{prefix}{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"


def seed(value, key: str = "seed") -> int:
    return number(value, key, lo=0, hi=SEED_MAX, integer=True)


def choice(value, key: str, options) -> str:
    if value not in options:
        raise ConfigError(f"{key}={value!r} is not one of {sorted(options)}")
    return value


def nonfinite_parameters(module) -> list[str]:
    """Names of the parameters and buffers of `module` (an nn.Module) that hold a NaN or an infinity."""
    import torch

    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def nonfinite_values(values: dict) -> list[str]:
    """Keys of `values` whose number is NaN or infinite."""
    return [k for k, v in values.items() if isinstance(v, numbers.Real) and not math.isfinite(v)]
