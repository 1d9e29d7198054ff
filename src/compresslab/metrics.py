"""Size and cost figures of a model: one definition each (docs/metrics.md defines them)."""

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


def prediction_agreement(logits_a, logits_b) -> float:
    """Fraction of inputs on which two models predict the same class (from their logits)."""
    return float((logits_a.argmax(dim=-1) == logits_b.argmax(dim=-1)).float().mean())


# -- compression figures (docs/metrics.md) ---------------------------------------------------

def _weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    from compresslab.compression.transforms import WEIGHT_LAYERS

    return {name: m for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}


def output_positions(model: nn.Module, input_shape) -> dict[str, int]:
    """For each Linear/Conv layer, how many outputs per channel one sample produces (1 for a Linear
    on flat input, H_out x W_out for a Conv2d): the times each of its weights is used."""
    import torch

    layers = _weight_layers(model)
    found, hooks = {}, []
    for name, m in layers.items():
        channels = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        hooks.append(m.register_forward_hook(
            lambda mod, inp, out, name=name, c=channels: found.__setitem__(name, out.numel() // c)))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return found


def layer_bits(model: nn.Module) -> dict[str, int]:
    """Bit width of each quantized parameter's values: the configured bits, or the measured
    ceil(log2(distinct levels)) where only a scale was given. Parameters not listed are float32."""
    from compresslab.compression.functional import levels_bits
    from compresslab.compression.transforms import quantization_of

    params = dict(model.named_parameters())
    return {n: s.bits if s.bits is not None else levels_bits(params[n], s.per_channel)
            for n, s in quantization_of(model).items() if n in params}


def compression_metrics(model: nn.Module, input_shape) -> dict:
    """Size and cost figures of a (compressed) model, whole and per Linear/Conv layer.

    - `params_total`, `params_nonzero`: every parameter, biases and norms included (count_params);
      `sparsity` = 1 - nonzero/total; `compression_ratio` = total / nonzero (ShrinkBench).
    - `bits_per_weight`: mean bit width of the stored nonzero values over all parameters
      (a quantized parameter's bits, 32 for the float ones); positions of zeros are not counted.
    - `macs_dense` / `macs_nonzero`: multiply-accumulates (MACs; one MAC = one multiply and one add,
      about 2 FLOPs) of the Linear/Conv layers for one sample, with all weights / with the nonzero
      weights only; `theoretical_speedup` = their ratio.
      (Pooling, activations and recurrent layers are not counted.)
    - `layers`: per Linear/Conv layer {name, params, params_nonzero, sparsity, compression_ratio,
      bits, macs_dense, macs_nonzero} (params = weight + bias; sparsity of the weight).

    Usage: `metrics.compression_metrics(module.model, dm.input_shape)` after compressing.
    """
    total, nonzero = count_params(model)
    bits = layer_bits(model)
    positions = output_positions(model, input_shape)
    stored_bits = sum(int(p.count_nonzero()) * bits.get(n, 32) for n, p in model.named_parameters())
    layers = []
    for name, m in _weight_layers(model).items():
        w, prefix = m.weight, f"{name}." if name else ""
        l_total = sum(p.numel() for p in m.parameters(recurse=False))
        l_nonzero = sum(int(p.count_nonzero()) for p in m.parameters(recurse=False))
        w_nonzero = int(w.count_nonzero())
        layers.append({"name": name, "params": l_total, "params_nonzero": l_nonzero,
                       "sparsity": 1 - w_nonzero / w.numel(),
                       "compression_ratio": l_total / max(1, l_nonzero),
                       "bits": bits.get(prefix + "weight", 32),
                       "macs_dense": positions.get(name, 0) * w.numel(),
                       "macs_nonzero": positions.get(name, 0) * w_nonzero})
    macs_dense = sum(lay["macs_dense"] for lay in layers)
    macs_nonzero = sum(lay["macs_nonzero"] for lay in layers)
    return {"params_total": total, "params_nonzero": nonzero, "sparsity": 1 - nonzero / max(1, total),
            "compression_ratio": total / max(1, nonzero), "bits_per_weight": stored_bits / max(1, nonzero),
            "macs_dense": macs_dense, "macs_nonzero": macs_nonzero,
            "theoretical_speedup": macs_dense / max(1, macs_nonzero), "layers": layers}


def latency_ms(model: nn.Module, input_shape, batch: int, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time (ms) of one CPU forward pass of `batch` samples in eval mode. The weights are
    dense tensors with zeros, so pruning does not speed this up (no sparse kernels are used)."""
    import copy
    import statistics
    import time

    import torch

    cpu = copy.deepcopy(model).cpu().eval()
    x = torch.randn(batch, *input_shape)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            cpu(x)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes on disk of `torch.save(model.state_dict())` with float32 tensors: what the artifact
    ratio divides by."""
    import os
    import tempfile

    import torch

    state = {k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(suffix=".pt")
    os.close(fd)
    try:
        torch.save(state, tmp)
        return os.path.getsize(tmp)
    finally:
        os.remove(tmp)
