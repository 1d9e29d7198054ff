"""In-place verbs on a model (`clip_`, `prune_`, `quantize_`), built on the pure functions.

Each verb compresses the model's *targets* (default: the weights of Linear and Conv layers; not
biases, not norms) and returns what must be kept while the model trains on:

- `clip_` and `prune_` return masks {parameter name: bool mask}; `apply_masks_` re-zeroes them.
- `quantize_` returns {parameter name: QuantSpec} and records the same on the model
  (`quantization_of(model)`), which the metrics and the artifact read to know each tensor's grid.

Usage::

    from compresslab.compression import prune_, quantize_
    masks = prune_(model, rate=0.9, scope="global")
    specs = quantize_(model, bits=6, method="kmeans")
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from compresslab.compression import functional as F

# Modules whose `weight` is a compression target unless `include` says otherwise.
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
QUANT_ATTR = "compresslab_quantization"


@dataclass
class QuantSpec:
    """How one tensor is quantized: `uniform` codes w*scale on a `bits` grid (bits None = unclamped),
    or `kmeans` weight sharing (codebook = the tensor's distinct nonzero values)."""
    method: str
    bits: int | None
    per_channel: bool = False
    scale: torch.Tensor | None = None
    # kmeans only: cluster index of each nonzero weight, fixed while fine-tuning shares the centroids
    assignment: torch.Tensor | None = field(default=None, repr=False)


def targets(model: nn.Module, include=None, exclude=()) -> dict[str, nn.Parameter]:
    """Parameters to compress, by name. `include`: regexes matched against full parameter names
    (None = every Linear/Conv weight); `exclude`: regexes removed from that set."""
    if include:
        chosen = {n: p for n, p in model.named_parameters() if any(re.fullmatch(r, n) for r in include)}
    else:
        chosen = {f"{name}.weight" if name else "weight": m.weight for name, m in model.named_modules()
                  if isinstance(m, WEIGHT_LAYERS) and m.weight is not None}
    return {n: p for n, p in chosen.items() if not any(re.fullmatch(r, n) for r in exclude or ())}


def nonzero_masks(model: nn.Module, include=None, exclude=()) -> dict[str, torch.Tensor]:
    """Masks of the targets' current nonzeros: what a later stage keeps of an earlier one's zeros."""
    return {n: p.detach() != 0 for n, p in targets(model, include, exclude).items()}


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].device))


def _merge(masks: dict, new: dict) -> dict:
    return {n: (m & masks[n].to(m.device)) if masks and n in masks else m for n, m in new.items()}


@torch.no_grad()
def clip_(model: nn.Module, threshold: float, relative: bool = False, include=None, exclude=(),
          masks: dict | None = None) -> dict[str, torch.Tensor]:
    """Zero every target weight with |w| <= t; t = threshold, or threshold x the layer's std
    (Han et al. 2015's quality parameter) when `relative`. Returns the masks (merged with `masks`)."""
    params = targets(model, include, exclude)
    new = {n: F.clip_mask(p, threshold * (float(p.std()) if relative else 1.0)) for n, p in params.items()}
    new = _merge(masks, new)
    apply_masks_(model, new)
    return new


@torch.no_grad()
def prune_(model: nn.Module, rate: float, scope: str = "layer", structure: str = "unstructured",
           include=None, exclude=(), masks: dict | None = None, criterion: str = "magnitude",
           seed: int = 0) -> dict[str, torch.Tensor]:
    """Zero the `rate` fraction of smallest-magnitude target weights, per layer or over all targets
    together (`scope="global"`); `structure="neuron"` zeroes whole output units by L2 norm (per layer).
    `criterion="random"` ranks weights (or units) by scores drawn from `seed` instead of magnitude.
    Already-zero weights count as the smallest, so pruning again to a higher rate only adds zeros."""
    params = targets(model, include, exclude)
    names = list(params)
    generator = torch.Generator().manual_seed(int(seed))
    if criterion == "random" and structure == "neuron":
        row_scores = {n: F.random_scores(F.row_norms(params[n]), generator) for n in names}
        new = {n: F.structured_mask(params[n], rate, row_scores[n]) for n in names}
    elif structure == "neuron":
        new = {n: F.structured_mask(params[n], rate) for n in names}
    else:
        scores = [F.random_scores(params[n], generator) if criterion == "random" else params[n].detach().abs()
                  for n in names]
        if scope == "global":
            new = dict(zip(names, F.lowest_masks(scores, rate)))
        else:
            new = {n: F.lowest_masks([s], rate)[0] for n, s in zip(names, scores)}
    new = _merge(masks, new)
    apply_masks_(model, new)
    return new


@torch.no_grad()
def quantize_(model: nn.Module, bits: int | None = None, scale: float | None = None,
              per_channel: bool = False, method: str = "uniform", include=None, exclude=(),
              iters: int = 30) -> dict[str, QuantSpec]:
    """Quantize every target weight in place. uniform: w_q = clamp(round(w*scale), +-(2^(b-1)-1))/scale
    with `scale` given, or derived from `bits` per tensor or per output channel. kmeans: weight
    sharing with 2^bits centroids over the nonzero weights. Zeros stay zero either way."""
    specs = {}
    for name, p in targets(model, include, exclude).items():
        if method == "kmeans":
            nz = p != 0
            codebook, idx = F.kmeans_codebook(p[nz], 2 ** bits, iters)
            p[nz] = codebook[idx].to(p.dtype)
            specs[name] = QuantSpec("kmeans", bits, assignment=idx)
        else:
            s = torch.as_tensor(float(scale)) if scale is not None else F.scale_for_bits(p, bits, per_channel)
            p.copy_(F.quantize_tensor(p, s, bits))
            specs[name] = QuantSpec("uniform", bits, per_channel and scale is None, s)
    quantization_of(model).update(specs)
    return specs


def requantize(w: torch.Tensor, spec: QuantSpec, nonzero: torch.Tensor | None = None) -> torch.Tensor:
    """The grid point of each latent weight under a fixed spec: uniform keeps its scale; kmeans keeps
    each weight's cluster and moves the centroid to the cluster's mean (Deep Compression's shared-
    weight fine-tuning, with the averaged gradient). `nonzero` marks the weights that were clustered."""
    if spec.method == "uniform":
        return F.quantize_tensor(w, spec.scale.to(w.device), spec.bits)
    idx = spec.assignment.to(w.device)
    values = w[nonzero]
    k = int(idx.max()) + 1 if idx.numel() else 0
    sums = torch.zeros(k, device=w.device, dtype=w.dtype).index_add_(0, idx, values)
    means = sums / torch.bincount(idx, minlength=k).clamp(min=1).to(w.dtype)
    out = torch.zeros_like(w)
    out[nonzero] = means[idx]
    return out


def quantization_of(model: nn.Module) -> dict[str, QuantSpec]:
    """The quantization recorded on the model by `quantize_` ({} for a float model)."""
    if not isinstance(getattr(model, QUANT_ATTR, None), dict):
        object.__setattr__(model, QUANT_ATTR, {})
    return getattr(model, QUANT_ATTR)
