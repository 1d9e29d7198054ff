"""Requested vs achieved: a compressed model must have the sparsity and bit width its config asked
for, or the job fails saying which tensor missed by how much, instead of logging a wrong figure."""

from __future__ import annotations

from torch import nn

from compresslab.compression import functional as F
from compresslab.compression.config import CompressionConfig
from compresslab.compression.transforms import quantization_of, targets
from compresslab.errors import CompresslabError


class TargetMissed(CompresslabError):
    """The compressed model does not have the sparsity or bit width its config asked for."""


def achieved_sparsity(model: nn.Module, c: CompressionConfig) -> dict[str, float]:
    """Sparsity of the pruned tensors as the config counts it: one figure for `scope=global`
    ("all"), one per tensor otherwise."""
    params = targets(model, c.include, c.exclude)
    if c.scope == "global" and c.structure != "neuron":
        zeros = sum(int((p == 0).sum()) for p in params.values())
        return {"all": zeros / max(1, sum(p.numel() for p in params.values()))}
    return {n: F.sparsity(p) for n, p in params.items()}


def verify(model: nn.Module, c: CompressionConfig, done: list[str]) -> dict:
    """Check the transforms in `done` against their targets; returns the measured figures.

    - prune: |achieved - rate| <= tolerance right after pruning (plus one unit's share for neuron
      pruning); once later stages ran (quantization can round more weights to zero), achieved >=
      rate - tolerance, i.e. the masks held.
    - quantize: the measured bit width (ceil(log2(distinct nonzero values)), per channel where the
      scale is) is at most `bits`.
    """
    measured = {}
    problems = []
    if "prune" in done:
        exact = done[-1] == "prune"
        params = targets(model, c.include, c.exclude)
        for name, s in achieved_sparsity(model, c).items():
            slack = c.tolerance + (1 / params[name].shape[0] if c.structure == "neuron" else 0)
            measured[f"sparsity[{name}]"] = s
            if (abs(s - c.rate) > slack) if exact else (s < c.rate - slack):
                problems.append(f"{name}: sparsity {s:.4f}, requested method.rate={c.rate} "
                                f"(tolerance {slack:.4f})")
    if "quantize" in done and c.bits is not None:
        params = dict(model.named_parameters())
        for name, spec in quantization_of(model).items():
            if name not in params:
                continue
            bits = F.levels_bits(params[name], spec.per_channel)
            measured[f"bits[{name}]"] = bits
            if bits > c.bits:
                problems.append(f"{name}: {bits} bits measured, requested method.bits={c.bits}")
    if problems:
        raise TargetMissed("compressed model misses its targets after " + " -> ".join(done) + ": "
                           + "; ".join(problems))
    return measured
