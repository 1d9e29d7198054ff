"""Baseline runs, and the trained-once baselines that compressed and distilled runs start from."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from compresslab import checks, reuse
from compresslab.checkpoint import load_model, save_model
from compresslab.files import atomic_write
from compresslab.metrics import count_params, size_fp32_bytes
from compresslab.models import build_model
from compresslab.modules import Classifier
from compresslab.steps import Evaluate, Fit, execute

log = logging.getLogger(__name__)

# Data keys that change only how evaluation is batched or where tensors live, not the trained model.
_DATA_KEYS_NOT_IN_SPEC = ("eval_batch_size", "on_device", "data_dir", "max_test")


def check_recipe(train_cfg, key: str = "train") -> None:
    checks.number(train_cfg.epochs, f"{key}.epochs", lo=0, integer=True)
    checks.number(train_cfg.optimizer.lr, f"{key}.optimizer.lr", lo=0, lo_open=True)
    checks.number(train_cfg.optimizer.get("weight_decay", 0.0), f"{key}.optimizer.weight_decay", lo=0)


def check(cfg) -> None:
    check_recipe(cfg.train)


def model_spec(cfg, model_cfg, train_cfg) -> dict:
    """What determines a trained model: data (as trained on), architecture, recipe, seed."""
    data = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()
            if k not in _DATA_KEYS_NOT_IN_SPEC}
    return {"data": data, "model": _plain(model_cfg), "train": _plain(train_cfg), "seed": cfg.seed,
            "deterministic": bool(cfg.get("deterministic", False))}


def train_classifier(cfg, dm, model_cfg, train_cfg, out_dir: Path, loggers=(), callbacks=()):
    """Steps (compresslab.steps) that build, train and test one classifier and write its portable
    `model.pt` into `out_dir`; they return (module, metrics). `callbacks` join the fit (e.g. a
    CompressionCallback for a compressed student's scratch twin)."""
    model = build_model(_plain(model_cfg), dm.input_shape, dm.num_classes)
    module = Classifier(model, dm.num_classes, _plain(train_cfg.optimizer), _plain(train_cfg.scheduler),
                        train_cfg.epochs)
    fitted = yield Fit(cfg, module, dm, out_dir, train_cfg.epochs, loggers, callbacks)
    scores = yield Evaluate(cfg, module, dm)
    metrics = {**scores, "val_acc": fitted["val_acc"], "train_time_s": fitted["train_time_s"]}
    total, nonzero = count_params(model)
    metrics.update(params_total=total, params_nonzero=nonzero, size_fp32_bytes=size_fp32_bytes(model))
    save_model(Path(out_dir) / reuse.MODEL_FILE, model, _plain(model_cfg), dm.input_shape,
               dm.num_classes, cfg.data.name, metrics)
    return module, metrics


def obtain_trained(cfg, dm, model_cfg, train_cfg, kind: str, ckpt: str | None = None):
    """The trained model a compressed or distilled job starts from: loaded from `ckpt` when given,
    else trained once per (data, model, recipe, seed) and shared by every job that asks."""
    def load(path: Path):
        return load_model(path, dm.input_shape, dm.num_classes, cfg.data.name, _plain(model_cfg),
                          role=f"{kind} checkpoint" if ckpt else f"cached {kind}")

    if ckpt:
        model, payload = load(Path(ckpt))
        return model, payload, str(ckpt)

    def train(directory: Path) -> Path:
        execute(train_classifier(cfg, dm, model_cfg, train_cfg, directory))
        return directory / reuse.MODEL_FILE

    path, (model, payload) = reuse.trained_once(Path(cfg.paths.cache_dir), kind,
                                                model_spec(cfg, model_cfg, train_cfg), train, load)
    return model, payload, str(path)


def baseline_spec(cfg) -> tuple | None:
    """(spec, run config, model config, recipe) of the trained-once baseline a compressed job of
    `cfg` starts from (None when it is given a checkpoint, or is no compressed job)."""
    if cfg.method.kind != "compress" or cfg.method.get("baseline_ckpt"):
        return None
    return model_spec(cfg, cfg.model, cfg.train), cfg, cfg.model, cfg.train


def steps(job):
    """A baseline job's steps: returns (metrics, paths)."""
    cfg = job.cfg
    _, metrics = yield from train_classifier(cfg, job.dm, cfg.model, cfg.train, job.out_dir, job.loggers)
    model_path = job.out_dir / reuse.MODEL_FILE
    _publish(model_path, reuse.cached_model_path(Path(cfg.paths.cache_dir), "baseline",
                                                 model_spec(cfg, cfg.model, cfg.train)))
    return metrics, {"checkpoint": str(model_path),
                     "lightning_checkpoints": str(job.out_dir / "checkpoints")}


def _publish(model_path: Path, cached: Path) -> None:
    """Offer a baseline job's model to later compressed jobs with the same spec (first one wins)."""
    if cached.exists():
        return
    atomic_write(cached, Path(model_path).read_bytes())


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
