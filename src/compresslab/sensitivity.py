"""Sensitivity scans (`sweep=sensitivity`): each compressible layer compressed alone, the others
dense, at a range of rates or bit widths, every job starting from the same trained-once baseline.

The scan's layers are the model's compressible layers, found by building the model the sweep's
config describes: the sweep preset sets `method.single_layer: ${compressible_layers:}`, which this
module resolves (in the launching process, once) to `net.1,net.3,...`, so the sweeper runs one job
per layer and rate without anyone typing the layer names.
"""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig

from compresslab.errors import ConfigError

log = logging.getLogger(__name__)


def compressible_layers(model, exclude=()) -> list[str]:
    """Module names of the layers whose weight compression targets by default (Linear/Conv)."""
    from compresslab.compression.transforms import targets

    return [name.removesuffix(".weight") for name in targets(model, None, exclude)]


def layers_of_config(cfg: DictConfig) -> list[str]:
    """The compressible layers of the model `cfg` describes, on its data (shapes only matter)."""
    from compresslab.configs import to_plain
    from compresslab.data import build_datamodule
    from compresslab.models import build_model

    dm = build_datamodule(cfg)
    dm.setup()
    model = build_model(to_plain(cfg.model), dm.input_shape, dm.num_classes)
    layers = compressible_layers(model, tuple(cfg.method.get("exclude") or ()))
    if not layers:
        raise ConfigError(f"sensitivity scan: model={cfg.model.name} has no compressible layer (no Linear "
                          f"or Conv weight left by method.exclude={list(cfg.method.get('exclude') or [])}); "
                          "pick another model or narrow method.exclude")
    log.info("sensitivity scan over the compressible layers of model=%s: %s", cfg.model.name, ", ".join(layers))
    return layers


def sweep_value(*, _root_: DictConfig) -> str:
    """The `${compressible_layers:}` resolver: the layers as one Hydra sweep value, `a,b,c`. A scan
    that cannot start stops the launch with its one-line reason (raised in a resolver, it would
    reach the user wrapped in Hydra's and OmegaConf's tracebacks)."""
    try:
        return ",".join(layers_of_config(_root_))
    except ConfigError as e:
        print(f"compresslab: error: {e}", file=sys.stderr)
        sys.exit(2)
