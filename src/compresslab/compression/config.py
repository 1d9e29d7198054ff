"""The flat method config of compression (conf/method/compress.yaml documents every key) and its
checks: a bad value fails here, before any training, with the key and what would work."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from omegaconf import OmegaConf

from compresslab import checks
from compresslab.compression.layers import override, parse_layers
from compresslab.errors import ConfigError

TRANSFORMS = ("clip", "prune", "quantize")
SCHEDULES = ("oneshot", "iterative", "gradual")
CRITERIA = ("magnitude", "random")


@dataclass
class CompressionConfig:
    pipeline: tuple = ()
    include: tuple | None = None
    exclude: tuple = ()
    single_layer: str | None = None  # compress this layer alone (a sensitivity scan's point)
    seed: int = 0                    # draws of random pruning (the job's seed)
    # clip
    threshold: float | None = None
    relative: bool = False
    # prune
    rate: float | None = None
    quality: float | None = None   # Han et al. 2015: zero |w| <= quality x the layer's std, instead of a rate
    criterion: str = "magnitude"
    scope: str = "layer"
    structure: str = "unstructured"
    schedule: str = "oneshot"
    rounds: int = 4
    initial_sparsity: float = 0.0
    prune_every: int = 50
    prune_start: int = 0
    prune_end: float = 0.75
    shrink: bool = True            # neuron pruning: also export the smaller dense model (shrink.py)
    # quantize
    bits: int | None = None
    scale: float | None = None
    per_channel: bool = False
    quantizer: str = "uniform"
    qat: bool = True
    kmeans_iters: int = 30
    # fine-tuning and checks
    finetune_epochs: int = 0
    quantize_epochs: int | None = None
    tolerance: float = 0.01
    # per-layer settings: ((pattern, ((key, value), ...)), ...), see compression/layers.py
    layers: tuple = ()


def parse(method_cfg) -> CompressionConfig:
    """CompressionConfig from a method config (DictConfig or dict), checked; unknown keys ignored."""
    raw = OmegaConf.to_container(method_cfg, resolve=True) if OmegaConf.is_config(method_cfg) \
        else dict(method_cfg)
    known = {f.name for f in fields(CompressionConfig)}
    values = {k: v for k, v in raw.items() if k in known and v is not None}
    for key in ("pipeline", "exclude"):
        values[key] = tuple(values.get(key) or ())
    if "include" in values:
        values["include"] = tuple(values["include"]) or None
    if values.get("single_layer") is not None:
        if values.get("include"):
            raise ConfigError(f"method.single_layer={values['single_layer']} and method.include are both set; "
                              "set one (single_layer compresses that layer's weight alone)")
        values["include"] = (re.escape(str(values["single_layer"])) + r"\.weight",)
    values["layers"] = parse_layers(values.get("layers"))
    c = CompressionConfig(**values)
    check(c)
    for pattern, setting in c.layers:
        try:
            check(override(c, setting))
        except ConfigError as e:
            raise ConfigError(f"method.layers[{pattern!r}]: {e}") from e
    return c


def check(c: CompressionConfig) -> None:
    if not c.pipeline:
        raise ConfigError(f"method.pipeline is empty; list the transforms to apply in order, from {TRANSFORMS}")
    for name in c.pipeline:
        checks.choice(name, "method.pipeline[]", TRANSFORMS)
    if len(set(c.pipeline)) != len(c.pipeline):
        raise ConfigError(f"method.pipeline={list(c.pipeline)} names a transform twice; each runs once")
    if "quantize" in c.pipeline and c.pipeline[-1] != "quantize":
        raise ConfigError(f"method.pipeline={list(c.pipeline)}: quantize must come last (a later transform "
                          "would move weights off the quantization grid)")
    checks.number(c.finetune_epochs, "method.finetune_epochs", lo=0, integer=True)
    if c.quantize_epochs is not None:
        checks.number(c.quantize_epochs, "method.quantize_epochs", lo=0, integer=True)
    checks.number(c.tolerance, "method.tolerance", lo=0, hi=1)
    if "clip" in c.pipeline:
        if c.threshold is None:
            raise ConfigError("method.threshold is unset; clipping needs it (e.g. method.threshold=0.05)")
        checks.number(c.threshold, "method.threshold", lo=0)
    if "prune" in c.pipeline:
        checks.choice(c.criterion, "method.criterion", CRITERIA)
        if (c.rate is None) == (c.quality is None):
            raise ConfigError("pruning needs exactly one of method.rate (the fraction to zero, e.g. 0.9) and "
                              f"method.quality (zero |w| <= quality x the layer's std); got rate={c.rate}, "
                              f"quality={c.quality}: set the other to null")
        if c.rate is not None:
            checks.number(c.rate, "method.rate", lo=0, hi=1, hi_open=True)
        else:
            checks.number(c.quality, "method.quality", lo=0)
            if c.scope == "global" or c.schedule == "gradual" or c.structure == "neuron":
                raise ConfigError("method.quality thresholds each layer's weights by its own std: it takes "
                                  "method.scope=layer, structure=unstructured and schedule oneshot or iterative")
        if c.scope == "global" and any(dict(s).keys() & {"rate", "quality"} for _, s in c.layers):
            raise ConfigError("method.scope=global ranks all weights to one method.rate; per-layer rates or "
                              "qualities in method.layers need method.scope=layer")
        checks.choice(c.scope, "method.scope", ("layer", "global"))
        checks.choice(c.structure, "method.structure", ("unstructured", "neuron"))
        checks.choice(c.schedule, "method.schedule", SCHEDULES)
        if c.structure == "neuron" and c.scope == "global":
            raise ConfigError("method.structure=neuron prunes per layer (norms of different layers are not "
                              "comparable); set method.scope=layer")
        checks.number(c.rounds, "method.rounds", lo=1, integer=True)
        if c.schedule == "iterative" and 0 < c.finetune_epochs < c.rounds:
            raise ConfigError(f"method.schedule=iterative with method.rounds={c.rounds} needs "
                              f"method.finetune_epochs >= {c.rounds} (one retraining epoch per round at "
                              f"least); raise finetune_epochs or lower rounds")
        checks.number(c.initial_sparsity, "method.initial_sparsity", lo=0,
                      hi=c.rate if c.rate is not None else 0)
        checks.number(c.prune_every, "method.prune_every", lo=1, integer=True)
        checks.number(c.prune_start, "method.prune_start", lo=0, integer=True)
        checks.number(c.prune_end, "method.prune_end", lo=0, hi=1, lo_open=True)
    if "quantize" in c.pipeline:
        checks.choice(c.quantizer, "method.quantizer", ("uniform", "kmeans"))
        if c.bits is not None:
            checks.number(c.bits, "method.bits", lo=1, hi=16, integer=True)
        if c.scale is not None:
            checks.number(c.scale, "method.scale", lo=0, lo_open=True)
        if c.quantizer == "kmeans":
            if c.bits is None:
                raise ConfigError("method.quantizer=kmeans needs method.bits (2^bits shared weights)")
            if c.per_channel or c.scale is not None:
                raise ConfigError("method.quantizer=kmeans takes neither method.scale nor method.per_channel; "
                                  "use method.quantizer=uniform for those")
        else:
            if c.bits is None and c.scale is None:
                raise ConfigError("quantization needs method.bits (scale derived from the weights) or "
                                  "method.scale (w_q = round(w*scale)/scale); set one")
            if c.bits == 1:
                raise ConfigError("method.bits=1 with the symmetric uniform grid leaves only 0 "
                                  "(codes in +-(2^(b-1)-1)); use bits >= 2 or method.quantizer=kmeans")
        checks.number(c.kmeans_iters, "method.kmeans_iters", lo=1, integer=True)
