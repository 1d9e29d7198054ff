"""Per-layer settings: `method.layers` maps parameter-name patterns to the method keys that differ
for the parameters they match, e.g. (Deep Compression's LeNet-5)::

    method:
      bits: 5                       # every compressed parameter ...
      layers:
        'features\\..*': {bits: 8}  # ... but the convolutions' weights

A pattern is a regex matched against whole parameter names (as `include` / `exclude`); the keys a
layer may set are LAYER_KEYS. Every other parameter keeps the plain keys. A pattern that matches no
compressed parameter, or two patterns that give one parameter different settings, fail before any
training. The groups of parameters that share one setting are compressed together (one call of
the verb per group), so a config without `layers` is one group and behaves as before.
"""

from __future__ import annotations

import dataclasses
import re

from torch import nn

from compresslab.compression.transforms import WEIGHT_LAYERS, targets
from compresslab.errors import ConfigError

# Keys a layer may override: what to prune it to and how to quantize it.
LAYER_KEYS = ("rate", "quality", "bits", "quantizer", "per_channel", "scale")


def parse_layers(raw) -> tuple[tuple[str, tuple], ...]:
    """`method.layers` as ((pattern, ((key, value), ...)), ...), keys and patterns checked."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError(f"method.layers={raw!r} must be a mapping {{pattern: {{key: value}}}}, e.g. "
                          "method.layers={'features\\..*': {bits: 8}}")
    out = []
    for pattern, setting in raw.items():
        where = f"method.layers[{pattern!r}]"
        try:
            re.compile(str(pattern))
        except re.error as e:
            raise ConfigError(f"{where}: the pattern is not a regex ({e})") from e
        if not isinstance(setting, dict) or not setting:
            raise ConfigError(f"{where}={setting!r} must be a non-empty mapping of keys from {list(LAYER_KEYS)}")
        unknown = sorted(set(setting) - set(LAYER_KEYS))
        if unknown:
            raise ConfigError(f"{where} sets {unknown}, which a layer cannot set; per layer: {list(LAYER_KEYS)}")
        out.append((str(pattern), tuple(sorted(setting.items()))))
    return tuple(out)


def override(c, setting: tuple):
    """The config one layer sees: the plain keys with its own on top. A layer's `rate` replaces a
    plain `quality` and the other way round: each layer is pruned by one criterion."""
    values = dict(setting)
    if "rate" in values and "quality" not in values:
        values["quality"] = None
    if "quality" in values and "rate" not in values:
        values["rate"] = None
    return dataclasses.replace(c, layers=(), **values)


def setting_of(c, name: str) -> tuple:
    """The overrides of parameter `name`: those of the patterns matching it (they must agree)."""
    found = {s for pattern, s in c.layers if re.fullmatch(pattern, name)}
    if len(found) > 1:
        patterns = [p for p, s in c.layers if re.fullmatch(p, name)]
        raise ConfigError(f"method.layers: patterns {patterns} all match {name} with different settings; "
                          "make them match different parameters or give them the same setting")
    return found.pop() if found else ()


PRUNE_KEYS = ("rate", "quality")
QUANT_KEYS = ("bits", "quantizer", "per_channel", "scale")


def groups(c, names, keys=LAYER_KEYS) -> list[tuple[object, list[str]]]:
    """[(config of the group, its parameter names)] for the parameters `names`, in model order,
    grouped by their settings of `keys` (a global prune ranks layers that differ in bits together)."""
    out: dict[tuple, list[str]] = {}
    for name in names:
        out.setdefault(tuple(kv for kv in setting_of(c, name) if kv[0] in keys), []).append(name)
    return [(override(c, s) if s else c, members) for s, members in out.items()]


def output_layer(model: nn.Module) -> str | None:
    """Parameter name of the weight of the last Linear/Conv layer: the one that gives the logits."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, WEIGHT_LAYERS):
            last = f"{name}.weight" if name else "weight"
    return last


def prune_targets(model: nn.Module, c) -> dict[str, nn.Parameter]:
    """What pruning compresses: the targets, less the output layer under neuron pruning (its units
    are the classes) unless `include` names its parameters itself."""
    params = targets(model, c.include, c.exclude)
    if c.structure == "neuron" and not c.include:
        params.pop(output_layer(model), None)
    return params


def check_layers(model: nn.Module, c) -> None:
    """Fail before training when a pattern matches no compressed parameter or two disagree."""
    names = set(targets(model, c.include, c.exclude))
    if "prune" in c.pipeline and c.structure == "neuron":
        names = set(prune_targets(model, c)) | (names if "quantize" in c.pipeline else set())
    for pattern, _ in c.layers:
        if not any(re.fullmatch(pattern, n) for n in names):
            raise ConfigError(f"method.layers[{pattern!r}] matches no compressed parameter of this model; "
                              f"patterns match whole parameter names, from {sorted(names)}")
    for name in names:
        setting_of(c, name)


def layer_targets(model: nn.Module, c) -> dict[str, dict]:
    """{parameter name: what the config asked of it}: rate or quality (pruning), bits and quantizer."""
    out: dict[str, dict] = {}
    if "prune" in c.pipeline:
        for g, names in groups(c, prune_targets(model, c), PRUNE_KEYS):
            for n in names:
                out.setdefault(n, {}).update({"quality": g.quality} if g.quality is not None else {"rate": g.rate})
    if "clip" in c.pipeline:
        for n in targets(model, c.include, c.exclude):
            out.setdefault(n, {})["threshold"] = c.threshold
    if "quantize" in c.pipeline:
        for g, names in groups(c, targets(model, c.include, c.exclude), QUANT_KEYS):
            for n in names:
                out.setdefault(n, {}).update(bits=g.bits, quantizer=g.quantizer)
    return out
