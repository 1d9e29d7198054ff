"""Portable model checkpoints: a state_dict plus what it takes to rebuild and check the model.

Loaded with `weights_only=True`, so a checkpoint can never run code; everything in it is tensors
and plain values. A checkpoint for another architecture or dataset is refused, not half-loaded.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from compresslab import checks
from compresslab.errors import CheckpointError
from compresslab.files import atomic_write, torch_bytes
from compresslab.models import build_model

FORMAT = "compresslab.model/1"


def save_model(path: Path, model: nn.Module, model_cfg: dict, input_shape, num_classes: int,
               data: str, metrics: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "model": dict(model_cfg), "input_shape": list(input_shape),
               "num_classes": int(num_classes), "data": data, "metrics": dict(metrics or {}),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    return atomic_write(path, torch_bytes(payload))


def load_model(path: Path, input_shape=None, num_classes: int | None = None, data: str | None = None,
               model_cfg: dict | None = None, role: str = "checkpoint") -> tuple[nn.Module, dict]:
    """Rebuild the model stored at `path`; every expectation given is checked against it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{role} {path} does not exist; give the path of a model.pt written "
                              "by a compresslab job, or leave it unset to train one")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        # torch's own message would advise weights_only=False, i.e. running the file's code.
        raise CheckpointError(f"{role} {path} cannot be read: it is truncated, corrupt or not a "
                              f"checkpoint ({_why_unreadable(e)}); {_fix(role)}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{role} {path} is not a compresslab model checkpoint "
                              f"(expected format {FORMAT}); use the model.pt a compresslab job wrote")
    mismatches = []
    if data is not None and payload["data"] != data:
        mismatches.append(f"dataset {payload['data']!r}, not {data!r}")
    if input_shape is not None and list(input_shape) != payload["input_shape"]:
        mismatches.append(f"input shape {tuple(payload['input_shape'])}, not {tuple(input_shape)}")
    if num_classes is not None and payload["num_classes"] != num_classes:
        mismatches.append(f"{payload['num_classes']} classes, not {num_classes}")
    if model_cfg is not None and _arch(payload["model"]) != _arch(model_cfg):
        mismatches.append(f"model {_arch(payload['model'])}, not {_arch(model_cfg)}")
    if mismatches:
        raise CheckpointError(f"{role} {path} was trained for {'; '.join(mismatches)}; "
                              "point it at a checkpoint of this model and dataset")
    model = build_model(payload["model"], payload["input_shape"], payload["num_classes"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{role} {path} does not fit its own model config "
                              f"({str(e).splitlines()[0]})") from e
    bad = checks.nonfinite_parameters(model)
    if bad:
        raise CheckpointError(f"{role} {path} holds non-finite weights ({', '.join(bad[:3])}); "
                              f"{_fix(role)}")
    return model, payload


def _why_unreadable(e: BaseException) -> str:
    """A short reason that names no remedy (torch's messages suggest unsafe ones)."""
    if isinstance(e, (EOFError, zipfile.BadZipFile)) or "zip archive" in str(e) or \
            getattr(e, "errno", None) == 22:  # reading a truncated zip seeks past the end: EINVAL
        return "not a complete zip archive"
    if isinstance(e, pickle.UnpicklingError):
        return ("it holds objects other than tensors and plain values" if "Weights only" in str(e)
                else "not a torch file")
    if isinstance(e, OSError):
        return e.strerror or type(e).__name__
    return type(e).__name__


def _fix(role: str) -> str:
    if role.startswith("cached"):
        return "it is set aside and trained again"
    return "point it at a model.pt written by a compresslab job, or leave it unset to train one"


def _arch(model_cfg: dict) -> dict:
    """The keys that decide the parameter shapes (dropout does not)."""
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(model_cfg).items()
            if k not in ("name", "dropout", "input_dropout")}
