"""Trainer construction, fitting and evaluation: the one place every run's training goes through."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from compresslab.modules import Classifier

TRAINER_KEYS = ("accelerator", "devices", "strategy", "precision", "num_nodes", "log_every_n_steps",
                "enable_progress_bar", "gradient_clip_val", "num_sanity_val_steps", "benchmark",
                "limit_train_batches", "limit_val_batches", "check_val_every_n_epoch")


def make_trainer(cfg, out_dir: Path, epochs: int, loggers=(), checkpoints: bool = True,
                 has_val: bool = True, callbacks=()) -> pl.Trainer:
    options = {k: v for k, v in dict(cfg.trainer).items() if k in TRAINER_KEYS and v is not None}
    callbacks = list(callbacks)
    if checkpoints:
        callbacks.append(ModelCheckpoint(dirpath=Path(out_dir) / "checkpoints", filename="best",
                                         monitor="val/acc" if has_val else None, mode="max",
                                         save_last=True, auto_insert_metric_name=False))
    return pl.Trainer(max_epochs=epochs, logger=list(loggers) or False, callbacks=callbacks,
                      enable_checkpointing=checkpoints, default_root_dir=str(out_dir),
                      deterministic=bool(cfg.get("deterministic", False)), enable_model_summary=False,
                      **options)


def fit(cfg, module: Classifier, dm, out_dir: Path, epochs: int, loggers=(), callbacks=(),
        checkpoints: bool = True) -> dict:
    """Train `module` for `epochs`; resumes from `out_dir/checkpoints/last.ckpt` if a previous
    attempt of this job left one. Returns val_acc (None without a validation split) and train_time_s."""
    if epochs <= 0:
        return {"val_acc": None, "train_time_s": 0.0}
    trainer = make_trainer(cfg, out_dir, epochs, loggers, checkpoints, dm.has_val, callbacks)
    last = Path(out_dir) / "checkpoints" / "last.ckpt"
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if checkpoints and last.is_file() else None)
    elapsed = time.perf_counter() - start
    val = trainer.callback_metrics.get("val/acc")
    return {"val_acc": float(val) if val is not None else None, "train_time_s": elapsed}


def evaluate(cfg, module: Classifier, dm) -> dict:
    """Test accuracy (fraction) and loss of `module` on the test split."""
    trainer = make_trainer(cfg, Path("."), 1, checkpoints=False)
    trainer.progress_bar_callback and trainer.callbacks.remove(trainer.progress_bar_callback)
    trainer.test(module, datamodule=dm, verbose=False)
    m = trainer.callback_metrics
    return {"test_acc": float(m["test/acc"]), "test_loss": float(m["test/loss"])}
