"""The math of compression as pure tensor functions (no modules, no state): each is testable on a
3x3 tensor. docs/conventions.md states each formula as the project reads it (what clipping zeroes,
how many weights pruning removes, the quantization grid).

Masks are bool tensors shaped like the weight: True = kept, False = zeroed.
"""

from __future__ import annotations

import math

import torch


def clip_mask(w: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep |w| > threshold: clipping zeroes every weight with |w| <= t (both signs)."""
    return w.abs() > threshold


def magnitude_mask(w: torch.Tensor, rate: float) -> torch.Tensor:
    """Zero exactly round(rate * numel) of the smallest-magnitude entries (ties broken by position)."""
    return magnitude_masks([w], rate)[0]


def magnitude_masks(ws: list[torch.Tensor], rate: float) -> list[torch.Tensor]:
    """Global magnitude pruning: zero the `rate` fraction of the smallest |w| over all tensors together."""
    return lowest_masks([w.detach().abs() for w in ws], rate)


def random_scores(w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random ranking of w's entries (random pruning, the control of Blalock et al. 2020): uniform
    scores in [0, 1), already-zero entries at -1 so that pruning again to a higher rate only adds
    zeros. The same generator state gives the same ranking, so the rounds of a schedule nest."""
    scores = torch.rand(w.shape, generator=generator).to(w.device)
    return torch.where(w.detach() == 0, torch.full_like(scores, -1.0), scores)


def lowest_masks(scores: list[torch.Tensor], rate: float) -> list[torch.Tensor]:
    """Zero exactly round(rate * total) entries of the lowest score over all tensors together (ties
    broken by position)."""
    flat = torch.cat([s.flatten() for s in scores])
    k = round(rate * flat.numel())
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k > 0:
        keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
    return [m.view_as(s) for m, s in zip(keep.split([s.numel() for s in scores]), scores)]


def row_norms(w: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output unit: rows of a Linear weight, output channels of a conv kernel."""
    return w.detach().flatten(1).norm(dim=1) if w.dim() > 1 else w.detach().abs()


def structured_mask(w: torch.Tensor, rate: float, row_scores: torch.Tensor | None = None) -> torch.Tensor:
    """Zero whole output units (neurons / conv channels): the round(rate * units) of smallest L2 norm,
    or of lowest `row_scores` (one per unit) when given."""
    keep_rows = lowest_masks([row_norms(w) if row_scores is None else row_scores], rate)[0]
    return keep_rows.view(-1, *([1] * (w.dim() - 1))).expand_as(w).clone()


def sparsity(t: torch.Tensor) -> float:
    """Fraction of entries that are exactly zero."""
    return 1.0 - int(t.count_nonzero()) / max(1, t.numel())


def qmax_of(bits: int) -> int:
    """Largest integer code of a symmetric signed `bits`-bit grid: 2^(b-1) - 1."""
    return 2 ** (bits - 1) - 1


def scale_for_bits(w: torch.Tensor, bits: int, per_channel: bool = False) -> torch.Tensor:
    """Scale that maps the largest |w| (of the tensor, or of each output channel) onto qmax_of(bits).
    All-zero channels get scale 1 (anything works: their codes are 0)."""
    a = w.detach().abs()
    amax = a.flatten(1).amax(dim=1).view(-1, *([1] * (w.dim() - 1))) if per_channel and w.dim() > 1 \
        else a.max()
    amax = torch.where(amax > 0, amax, torch.ones_like(amax))
    return qmax_of(bits) / amax


def quantize_codes(w: torch.Tensor, scale, qmax: int | None) -> torch.Tensor:
    """Integer codes clamp(round(w * scale), -qmax, qmax) as a float tensor (no clamp if qmax is None)."""
    q = torch.round(w * scale)
    return q if qmax is None else q.clamp(-qmax, qmax)


def quantize_tensor(w: torch.Tensor, scale, bits: int | None = None) -> torch.Tensor:
    """w_q = clamp(round(w * scale), -(2^(b-1)-1), 2^(b-1)-1) / scale; `bits=None` leaves it unclamped.
    `scale` is a number or a tensor broadcasting against w (per output channel)."""
    return quantize_codes(w, scale, None if bits is None else qmax_of(bits)) / scale


def fake_quantize(w: torch.Tensor, scale, bits: int | None = None) -> torch.Tensor:
    """quantize_tensor in the forward pass, identity in the backward pass (straight-through estimator)."""
    return w + (quantize_tensor(w, scale, bits) - w).detach()


def kmeans_codebook(values: torch.Tensor, k: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means (Lloyd) of `values` into at most k centroids, linearly initialised between min and
    max (Deep Compression's best initialisation). Returns (sorted codebook, index of each value)."""
    v = values.detach().flatten().float()
    if v.numel() == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    k = min(k, int(torch.unique(v).numel()))
    # Linear initialisation over the values with the gap around zero closed: after pruning no value
    # lies in (-min|v|, min|v|), and centroids started there would stay empty and be wasted.
    gap = v.abs().min()
    closed = v - torch.sign(v) * gap
    grid = torch.linspace(float(closed.min()), float(closed.max()), k)
    centroids = (grid + torch.sign(grid) * gap).sort().values
    for _ in range(iters):
        idx = nearest(v, centroids)
        counts = torch.bincount(idx, minlength=k)
        sums = torch.zeros(k).index_add_(0, idx, v)
        moved = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.equal(moved, centroids):
            break
        centroids = moved.sort().values
    used = torch.unique(nearest(v, centroids))  # drop centroids no value picked
    centroids = centroids[used]
    return centroids, nearest(v, centroids)


def nearest(v: torch.Tensor, sorted_centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for each value (centroids sorted ascending)."""
    mids = (sorted_centroids[1:] + sorted_centroids[:-1]) / 2
    return torch.bucketize(v, mids)


def kmeans_quantize(w: torch.Tensor, bits: int, iters: int = 30) -> torch.Tensor:
    """Weight sharing: every nonzero weight replaced by the nearest of 2^bits centroids fitted to the
    nonzero weights; zeros (pruned weights) stay exactly zero."""
    out = torch.zeros_like(w)
    nz = w != 0
    codebook, idx = kmeans_codebook(w[nz], 2 ** bits, iters)
    out[nz] = codebook[idx].to(w.dtype)
    return out


def levels_bits(w: torch.Tensor, per_channel: bool = False) -> int:
    """Measured bit width: ceil(log2(number of distinct nonzero values)) of the tensor, or the largest
    over output channels. Zeros are not counted: a sparse format stores them as positions."""
    groups = w.detach().flatten(1) if per_channel and w.dim() > 1 else w.detach().flatten()[None]
    levels = max(int(torch.unique(g[g != 0]).numel()) for g in groups)
    return max(1, math.ceil(math.log2(levels))) if levels > 1 else 1


def agp_sparsity(step: int, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float:
    """Zhu & Gupta 2017: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 for t in [t0, t0 + n dt];
    s_i before t0 and s_f after."""
    if step <= t0:
        return s_i
    progress = min(1.0, (step - t0) / (n * dt))
    return s_f + (s_i - s_f) * (1.0 - progress) ** 3


def iterative_sparsity(round_index: int, rounds: int, s_f: float) -> float:
    """Target of round `round_index` (1-based) of iterative pruning: each round removes the same
    fraction of the weights still left, so round `rounds` reaches s_f: 1 - (1 - s_f)^(r / rounds)."""
    return 1.0 - (1.0 - s_f) ** (min(round_index, rounds) / rounds)
