"""Plain nn.Modules, built from a model config and the data's input shape and class count."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from compresslab import checks
from compresslab.errors import ConfigError
from compresslab.models.lenet5 import LeNet5
from compresslab.models.mlp import MLP
from compresslab.models.mnist1d_cnn import MNIST1DCNN, MNIST1DGRU
from compresslab.models.resnet import CifarResNet

ARCHITECTURES = {"mlp": MLP, "lenet5": LeNet5, "mnist1d_cnn": MNIST1DCNN, "mnist1d_gru": MNIST1DGRU,
                 "resnet": CifarResNet}


# Model keys that are layer sizes (a GRU's `hidden` is one int, an MLP's a list of widths).
_SIZES = ("hidden", "channels", "width", "depth")
_RATES = ("dropout", "input_dropout")


def check_model_config(model_cfg, key: str = "model") -> None:
    """Sizes must be positive integers and dropout rates in [0, 1): a width of 0 or `abc` fails
    here, before any training, not as a model that trains at chance accuracy or a raw traceback."""
    for name in _SIZES:
        value = model_cfg.get(name)
        if isinstance(value, Sequence) and not isinstance(value, str):
            for i, width in enumerate(value):
                checks.number(width, f"{key}.{name}[{i}]", lo=1, integer=True)
        elif value is not None:
            checks.number(value, f"{key}.{name}", lo=1, integer=True)
    for name in _RATES:
        if model_cfg.get(name) is not None:
            checks.number(model_cfg.get(name), f"{key}.{name}", lo=0, hi=1, hi_open=True)


def build_model(model_cfg, input_shape, num_classes: int) -> nn.Module:
    """`model_cfg` is a mapping with `arch` plus that architecture's keyword arguments."""
    options = dict(model_cfg)
    arch = options.pop("arch", None)
    options.pop("name", None)
    if arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch={arch!r} is unknown; choose one of {sorted(ARCHITECTURES)}")
    if isinstance(options.get("hidden"), (list, tuple)):  # MLP widths; a GRU's `hidden` is one int
        options["hidden"] = [int(w) for w in options["hidden"]]
    try:
        model = ARCHITECTURES[arch](tuple(input_shape), num_classes, **options)
        with torch.no_grad():  # shapes the architecture cannot take fail here, not mid-training
            model.eval()(torch.zeros(2, *input_shape))
    except TypeError as e:
        raise ConfigError(f"model {arch}: {e}") from e
    except RuntimeError as e:
        raise ConfigError(f"model {arch} cannot take inputs of shape {tuple(input_shape)}: "
                          f"{str(e).splitlines()[0]}; pick a model that fits the data") from e
    return model.train()
