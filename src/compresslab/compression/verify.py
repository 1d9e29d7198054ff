"""Requested vs achieved: a compressed model must have the sparsity and bit width its config asked
for, or the job fails saying which tensor missed by how much, instead of logging a wrong figure."""

from __future__ import annotations

from torch import nn

from compresslab.compression import functional as F
from compresslab.compression.config import CompressionConfig
from compresslab.compression.layers import PRUNE_KEYS, QUANT_KEYS, groups, prune_targets
from compresslab.compression.transforms import quantization_of
from compresslab.errors import CompresslabError


class TargetMissed(CompresslabError):
    """The compressed model does not have the sparsity or bit width its config asked for."""


def achieved_sparsity(model: nn.Module, c: CompressionConfig) -> dict[str, float]:
    """Sparsity of the pruned tensors as the config counts it: one figure for `scope=global`
    ("all"), one per tensor otherwise."""
    params = prune_targets(model, c)
    if c.scope == "global" and c.structure != "neuron":
        zeros = sum(int((p == 0).sum()) for p in params.values())
        return {"all": zeros / max(1, sum(p.numel() for p in params.values()))}
    return {n: F.sparsity(p) for n, p in params.items()}


def verify(model: nn.Module, c: CompressionConfig, done: list[str]) -> dict:
    """Check the transforms in `done` against their targets (each layer's own, under
    `method.layers`); returns the measured figures.

    - prune by rate: |achieved - rate| <= tolerance right after pruning (plus one unit's share for
      neuron pruning); once later stages ran (quantization can round more weights to zero),
      achieved >= rate - tolerance, i.e. the masks held.
    - prune by quality: the sparsity is measured, not checked (the threshold sets it).
    - quantize: the measured bit width (ceil(log2(distinct nonzero values)), per channel where the
      scale is) is at most the layer's `bits`.
    """
    measured = {}
    problems = []
    if "prune" in done:
        exact = done[-1] == "prune"
        params = prune_targets(model, c)
        sparsity = achieved_sparsity(model, c)
        for g, names in groups(c, params, PRUNE_KEYS):
            for name in (["all"] if "all" in sparsity else names):
                s = sparsity[name]
                measured[f"sparsity[{name}]"] = s
                if g.rate is None:
                    continue
                slack = c.tolerance + (1 / params[name].shape[0] if c.structure == "neuron" else 0)
                if (abs(s - g.rate) > slack) if exact else (s < g.rate - slack):
                    problems.append(f"{name}: sparsity {s:.4f}, requested rate {g.rate} "
                                    f"(tolerance {slack:.4f})")
    if "quantize" in done:
        params = dict(model.named_parameters())
        specs = quantization_of(model)
        for g, names in groups(c, [n for n in specs if n in params], QUANT_KEYS):
            for name in names:
                bits = F.levels_bits(params[name], specs[name].per_channel)
                measured[f"bits[{name}]"] = bits
                if g.bits is not None and bits > g.bits:
                    problems.append(f"{name}: {bits} bits measured, requested bits={g.bits}")
    if problems:
        raise TargetMissed("compressed model misses its targets after " + " -> ".join(done) + ": "
                           + "; ".join(problems))
    return measured
