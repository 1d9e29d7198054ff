"""Structured pruning made real: the dense model with the pruned units removed.

After neuron / channel pruning a unit whose weight row is all zero still outputs a constant (its
bias, through the activation). `shrink(model, layers)` builds a smaller copy of the model:

- each layer in `layers` keeps only its units with a nonzero weight row (at least one);
- the layer that reads it loses the matching inputs: the same channels of a Conv, or, after a
  Flatten, the block of features each channel became;
- the removed units' constants are folded into that next layer's bias, so the small model computes
  what the masked one did (up to float rounding).

The path from a layer to the next one is read from a `torch.fx` trace and may hold only
channel-wise modules (PASS_THROUGH). Anything else (a residual add, a BatchNorm, a layer feeding
two places, a padded convolution reading a removed unit's nonzero constant) raises ShrinkError.
`resize_(model, sizes)` gives a freshly built model the small model's layer sizes, so the artifact
(export.py) can store the small model under its original model config.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn
from torch.nn import functional as TF

from compresslab.compression.transforms import WEIGHT_LAYERS
from compresslab.errors import CompresslabError

PASS_THROUGH = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.Dropout, nn.Identity,
                nn.MaxPool1d, nn.MaxPool2d, nn.Flatten)
_CONV = {nn.Conv1d: TF.conv1d, nn.Conv2d: TF.conv2d, nn.Conv3d: TF.conv3d}


class ShrinkError(CompresslabError):
    """The model's shape is one the structured export cannot follow."""


@dataclass
class Link:
    """How layer `producer`'s output reaches the next weight layer `consumer` (None: the output)."""
    producer: str
    consumer: str | None
    path: list[str]
    flattened: bool


def links(model: nn.Module) -> dict[str, Link]:
    """For every Linear/Conv layer, where its output goes; ShrinkError where it cannot be followed
    (the layer that fails is only a problem if it is to be shrunk: see `shrink`)."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # noqa: BLE001 - fx raises many kinds on code it cannot trace
        raise ShrinkError(f"the model cannot be traced for the structured export ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from e
    modules = dict(model.named_modules())
    found: dict[str, Link | str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], WEIGHT_LAYERS):
            continue
        path, cur, problem, consumer = [], node, None, None
        while problem is None:
            users = list(cur.users)
            if len(users) != 1:
                problem = f"its output goes to {len(users)} places"
                break
            u = users[0]
            if u.op == "output":
                break
            m = modules.get(u.target) if u.op == "call_module" else None
            if isinstance(m, WEIGHT_LAYERS):
                consumer = u.target
                break
            if not isinstance(m, PASS_THROUGH):
                problem = f"its output goes through {u.target if m is None else type(m).__name__}, " \
                          f"which the export cannot carry a removed unit through"
                break
            path.append(u.target)
            cur = u
        found[node.target] = problem or Link(node.target, consumer,
                                             path, any(isinstance(modules[p], nn.Flatten) for p in path))
    return found


def resized(m: nn.Module, n_in: int, n_out: int) -> nn.Module:
    """A new layer like `m` with `n_in` inputs and `n_out` outputs (weights to be copied in)."""
    bias = m.bias is not None
    if isinstance(m, nn.Linear):
        return nn.Linear(n_in, n_out, bias=bias)
    return type(m)(n_in, n_out, m.kernel_size, m.stride, m.padding, m.dilation, m.groups, bias, m.padding_mode)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def resize_(model: nn.Module, sizes: dict[str, list[int]]) -> nn.Module:
    """Give the layers named in `sizes` ({name: [inputs, outputs]}) those sizes (new weights)."""
    for name, (n_in, n_out) in sizes.items():
        _replace(model, name, resized(model.get_submodule(name), n_in, n_out))
    return model


def _out_shapes(model: nn.Module, input_shape) -> dict[str, tuple]:
    shapes, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, WEIGHT_LAYERS):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))))
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return shapes


@torch.no_grad()
def shrink(model: nn.Module, input_shape, layers) -> tuple[nn.Module, dict[str, list[int]]]:
    """(small model, {layer: [inputs, outputs]} of every layer whose size changed). `layers`: the
    names of the Linear/Conv layers whose all-zero weight rows are units to remove."""
    small = copy.deepcopy(model).eval()
    followed = links(small)
    shapes = _out_shapes(small, input_shape)
    sizes: dict[str, list[int]] = {}
    for name in [n for n in followed if n in set(layers)]:  # in forward order
        link = followed[name]
        if isinstance(link, str):
            raise ShrinkError(f"layer {name} cannot be shrunk: {link}")
        layer = small.get_submodule(name)
        keep = layer.weight.flatten(1).ne(0).any(dim=1)
        if not keep.any():
            keep[0] = True  # a layer of no units would break the model's shape; unit 0 outputs its bias
        if keep.all():
            continue
        if link.consumer is None:
            raise ShrinkError(f"layer {name} gives the model's output; its units are the classes and "
                              "cannot be removed (leave it out of method.include)")
        nxt = small.get_submodule(link.consumer)
        per_unit = _features_per_unit(name, layer, nxt, link)
        feature_keep = keep.repeat_interleave(per_unit)
        _fold(name, layer, nxt, link, small, shapes[name], keep, feature_keep)
        new = resized(layer, _inputs(layer), int(keep.sum()))
        new.weight.copy_(layer.weight[keep])
        if layer.bias is not None:
            new.bias.copy_(layer.bias[keep])
        _replace(small, name, new)
        sizes[name] = [_inputs(layer), int(keep.sum())]
        shrunk_next = resized(nxt, int(feature_keep.sum()), _outputs(nxt))
        shrunk_next.weight.copy_(nxt.weight[:, feature_keep])
        if nxt.bias is not None:
            shrunk_next.bias.copy_(nxt.bias)
        _replace(small, link.consumer, shrunk_next)
        sizes[link.consumer] = [int(feature_keep.sum()), sizes.get(link.consumer, [0, _outputs(nxt)])[1]]
    return small, sizes


def _inputs(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


def _outputs(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _features_per_unit(name: str, layer, nxt, link: Link) -> int:
    units, n_in = _outputs(layer), _inputs(nxt)
    if getattr(nxt, "groups", 1) != 1:
        raise ShrinkError(f"layer {link.consumer} after {name} is a grouped convolution; the export "
                          "removes whole input channels of ungrouped ones only")
    if n_in % units or (n_in != units and not (link.flattened and isinstance(nxt, nn.Linear))):
        raise ShrinkError(f"layer {link.consumer} reads {n_in} inputs from the {units} units of {name}; "
                          "the export follows same-channel reads and a Flatten before a Linear only")
    return n_in // units


def _fold(name, layer, nxt, link, model, out_shape, keep, feature_keep) -> None:
    """Add what the removed units fed into `nxt` (their constant output, through the path) to its bias."""
    if layer.bias is None:
        return
    const = torch.zeros(1, *out_shape)
    view = (1, -1) + (1,) * (len(out_shape) - 1)
    const += torch.where(keep, torch.zeros_like(layer.bias), layer.bias).view(view)
    for p in link.path:
        const = model.get_submodule(p).eval()(const)
    removed_inputs = (~feature_keep).view((1, -1) + (1,) * (const.dim() - 2)).to(const.dtype)
    const = const * removed_inputs
    if isinstance(nxt, nn.Linear):
        delta = const.flatten(1) @ nxt.weight.t()
        delta = delta[0]
    else:
        if nxt.padding_mode != "zeros":
            raise ShrinkError(f"layer {link.consumer} pads with {nxt.padding_mode!r}; the export folds "
                              "removed channels into zero-padded convolutions only")
        out = _CONV[type(nxt)](const, nxt.weight, None, nxt.stride, nxt.padding, nxt.dilation)
        delta = out.flatten(2)[0]
        if not torch.allclose(delta, delta[:, :1].expand_as(delta), rtol=1e-5, atol=1e-6):
            raise ShrinkError(f"layer {link.consumer} pads its input, so the constant output of the units "
                              f"removed from {name} does not fold into one bias; set method.shrink=false")
        delta = delta[:, 0]
    if not delta.any():
        return
    if nxt.bias is None:
        raise ShrinkError(f"layer {link.consumer} has no bias to take the constant output of the units "
                          f"removed from {name}; set method.shrink=false")
    nxt.bias.add_(delta)
