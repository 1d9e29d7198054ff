"""Size and cost figures of a model: one definition each (GUIDE.md section 2)."""

from __future__ import annotations

from torch import nn


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, nonzero) over every parameter, biases and norms included (ShrinkBench's count)."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(p.count_nonzero())
    return total, nonzero


def size_fp32_bytes(model: nn.Module) -> int:
    """Bytes of the parameters stored densely as float32."""
    return 4 * sum(p.numel() for p in model.parameters())
