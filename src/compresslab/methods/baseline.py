"""Baseline runs, and the trained-once baselines that compressed and distilled runs start from."""

from __future__ import annotations

import logging
from pathlib import Path

from compresslab import checks, reuse
from compresslab.checkpoint import load_model, save_model
from compresslab.configs import to_plain
from compresslab.files import atomic_write
from compresslab.metrics import count_params, size_fp32_bytes
from compresslab.models import build_model
from compresslab.modules import Classifier
from compresslab.steps import Evaluate, Fit, execute
from compresslab.training import is_rank_zero

log = logging.getLogger(__name__)

# The cache key of a trained model (`model_spec`) holds every setting that can change its trained
# weights: all of `data`, the model, the recipe (`train`), `seed`, `deterministic` and all of
# `trainer`, except the keys below, which change only how evaluation is batched, where tensors live,
# or what is shown and logged. A key missing from these lists is in the key: a new setting can cost
# a baseline reuse, never serve a model trained differently.
DATA_KEYS_NOT_IN_SPEC = ("eval_batch_size", "on_device", "data_dir", "max_test")
TRAINER_KEYS_NOT_IN_SPEC = ("log_every_n_steps", "enable_progress_bar", "progress_bar_refresh_rate",
                            "num_sanity_val_steps", "limit_val_batches", "check_val_every_n_epoch")


def check_recipe(train_cfg, key: str = "train") -> None:
    checks.number(train_cfg.epochs, f"{key}.epochs", lo=0, integer=True)
    checks.number(train_cfg.optimizer.lr, f"{key}.optimizer.lr", lo=0, lo_open=True)
    checks.number(train_cfg.optimizer.get("weight_decay", 0.0), f"{key}.optimizer.weight_decay", lo=0)


def check(cfg) -> None:
    check_recipe(cfg.train)


def model_spec(cfg, model_cfg, train_cfg) -> dict:
    """What determines a trained model (the rule above): data as trained on, architecture, recipe,
    seed and the trainer settings that change the weights (precision, clipping, accumulation, ...)."""
    data = {k: v for k, v in to_plain(cfg.data).items() if k not in DATA_KEYS_NOT_IN_SPEC}
    trainer = {k: v for k, v in to_plain(cfg.trainer).items() if k not in TRAINER_KEYS_NOT_IN_SPEC}
    return {"data": data, "model": to_plain(model_cfg), "train": to_plain(train_cfg), "trainer": trainer,
            "seed": cfg.seed, "deterministic": bool(cfg.get("deterministic", False))}


def train_classifier(cfg, dm, model_cfg, train_cfg, out_dir: Path, loggers=(), callbacks=()):
    """Steps (compresslab.steps) that build, train and test one classifier and write its portable
    `model.pt` into `out_dir`; they return (module, metrics). `callbacks` join the fit (e.g. a
    CompressionCallback for a compressed student's scratch twin)."""
    model = build_model(to_plain(model_cfg), dm.input_shape, dm.num_classes)
    module = Classifier(model, dm.num_classes, to_plain(train_cfg.optimizer), to_plain(train_cfg.scheduler),
                        train_cfg.epochs)
    fitted = yield Fit(cfg, module, dm, out_dir, train_cfg.epochs, loggers, callbacks)
    scores = yield Evaluate(cfg, module, dm)
    metrics = {**scores, "val_acc": fitted["val_acc"], "train_time_s": fitted["train_time_s"]}
    total, nonzero = count_params(model)
    metrics.update(params_total=total, params_nonzero=nonzero, size_fp32_bytes=size_fp32_bytes(model))
    if is_rank_zero():
        save_model(Path(out_dir) / reuse.MODEL_FILE, model, to_plain(model_cfg), dm.input_shape,
                   dm.num_classes, cfg.data.name, metrics)
    return module, metrics


def obtain_trained(cfg, dm, model_cfg, train_cfg, kind: str, ckpt: str | None = None):
    """The trained model a compressed or distilled job starts from: loaded from `ckpt` when given,
    else trained once per (data, model, recipe, seed) and shared by every job that asks."""
    def load(path: Path):
        return load_model(path, dm.input_shape, dm.num_classes, cfg.data.name, to_plain(model_cfg),
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
    if is_rank_zero():
        _publish(model_path, reuse.cached_model_path(Path(cfg.paths.cache_dir), "baseline",
                                                     model_spec(cfg, cfg.model, cfg.train)))
    return metrics, {"checkpoint": str(model_path),
                     "lightning_checkpoints": str(job.out_dir / "checkpoints")}


def _publish(model_path: Path, cached: Path) -> None:
    """Offer a baseline job's model to later compressed jobs with the same spec (first one wins)."""
    if cached.exists():
        return
    atomic_write(cached, Path(model_path).read_bytes())
