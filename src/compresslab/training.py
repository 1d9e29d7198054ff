"""Trainer construction, fitting and evaluation: the one place every run's training goes through."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.plugins import TorchCheckpointIO

from compresslab import checks
from compresslab.errors import diverged, nonfinite
from compresslab.files import atomic_write, set_aside, torch_bytes
from compresslab.modules import Classifier

log = logging.getLogger(__name__)

# gradient_clip_val is not among them: the module clips in its own step (Classifier.gradient_clip_val).
TRAINER_KEYS = ("accelerator", "devices", "strategy", "precision", "num_nodes", "log_every_n_steps",
                "enable_progress_bar", "num_sanity_val_steps", "benchmark",
                "limit_train_batches", "limit_val_batches", "check_val_every_n_epoch")


def make_trainer(cfg, out_dir: Path, epochs: int, loggers=(), checkpoints: bool = True,
                 has_val: bool = True, callbacks=(), finite_check: bool = True) -> pl.Trainer:
    """The Trainer of a fit or test. `finite_check=False` for a module that checks its own losses
    and weights (a stacked model fails only the model that diverged)."""
    options = {k: v for k, v in dict(cfg.trainer).items() if k in TRAINER_KEYS and v is not None}
    callbacks = [FiniteCheck(), *callbacks] if finite_check else list(callbacks)
    refresh = cfg.trainer.get("progress_bar_refresh_rate")
    if options.get("enable_progress_bar", True) and refresh:
        # Lightning's default redraws the bar every step: a cost per step a raw loop does not pay.
        callbacks.append(TQDMProgressBar(refresh_rate=int(refresh)))
    if cfg.trainer.get("channels_last"):
        callbacks.append(ChannelsLast())
    if checkpoints:
        ckpt_dir = Path(out_dir) / "checkpoints"
        # `save_last` rewrites last.ckpt only when the best one changes; resuming needs every epoch.
        callbacks += [ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/acc" if has_val else None,
                                      mode="max", auto_insert_metric_name=False),
                      ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                      enable_version_counter=False)]
    return pl.Trainer(max_epochs=epochs, logger=list(loggers) or False, callbacks=callbacks,
                      enable_checkpointing=checkpoints, default_root_dir=str(out_dir),
                      deterministic=bool(cfg.get("deterministic", False)), enable_model_summary=False,
                      plugins=[AtomicCheckpointIO()], **options)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's .ckpt files through the project's atomic writer: a kill or a full disk during a
    save never leaves half a checkpoint under its name (Lightning writes the final name in place)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, torch_bytes(checkpoint))


class FiniteCheck(pl.Callback):
    """Fails the fit when an epoch saw a non-finite training loss or left a non-finite weight.

    The loss of every training_step call is folded into one flag tensor on the device (no sync per
    step); the flag and the weights are read once per epoch."""

    def __init__(self) -> None:
        self._bad: torch.Tensor | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._bad = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            bad = ~torch.isfinite(loss.detach()).all()
            self._bad = bad if self._bad is None else self._bad | bad

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._bad is not None and bool(self._bad):
            raise diverged(f"in epoch {trainer.current_epoch}")
        require_finite_weights(pl_module, f"after epoch {trainer.current_epoch}")


def require_finite_weights(module: torch.nn.Module, where: str) -> None:
    bad = checks.nonfinite_parameters(module)
    if bad:
        raise nonfinite(f"weights are ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})", where)


class ChannelsLast(pl.Callback):
    """Holds the model's 4-D weights in channels-last memory order, which cuDNN's convolutions
    (above all under bf16 autocast on tensor cores) run faster on; inputs follow the weights."""

    def setup(self, trainer, pl_module, stage):
        pl_module.to(memory_format=torch.channels_last)


def fit(cfg, module: Classifier, dm, out_dir: Path, epochs: int, loggers=(), callbacks=(),
        checkpoints: bool = True) -> dict:
    """Train `module` for `epochs`; resumes from `out_dir/checkpoints/last.ckpt` if a previous
    attempt of this job left one. Returns val_acc (None without a validation split) and train_time_s."""
    if epochs <= 0:
        return {"val_acc": None, "train_time_s": 0.0}
    trainer = make_trainer(cfg, out_dir, epochs, loggers, checkpoints, dm.has_val, callbacks)
    module.gradient_clip_val = cfg.trainer.get("gradient_clip_val")
    dm.steps_per_call = checks.number(cfg.trainer.get("steps_per_call", 1), "trainer.steps_per_call", lo=1,
                                      integer=True)
    last = Path(out_dir) / "checkpoints" / "last.ckpt"
    resume = checkpoints and last.is_file() and _readable(trainer, last)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
    elapsed = time.perf_counter() - start
    last_loss = trainer.callback_metrics.get("train/loss")
    if last_loss is not None and not torch.isfinite(last_loss):
        raise diverged("at the end of training")
    require_finite_weights(module, "at the end of training")
    val = trainer.callback_metrics.get("val/acc")
    return {"val_acc": float(val) if val is not None else None, "train_time_s": elapsed}


def evaluate(cfg, module: Classifier, dm) -> dict:
    """Test accuracy (fraction) and loss of `module` on the test split."""
    trainer = make_trainer(cfg, Path("."), 1, checkpoints=False)
    trainer.progress_bar_callback and trainer.callbacks.remove(trainer.progress_bar_callback)
    trainer.test(module, datamodule=dm, verbose=False)
    m = trainer.callback_metrics
    metrics = {"test_acc": float(m["test/acc"]), "test_loss": float(m["test/loss"])}
    bad = checks.nonfinite_values(metrics)
    if bad:
        raise nonfinite(f"the evaluation gave {', '.join(bad)}:", "on the test split")
    return metrics


def _readable(trainer: pl.Trainer, path: Path) -> bool:
    """Whether the resume checkpoint loads; one that does not is set aside (training starts over)."""
    try:
        trainer.strategy.checkpoint_io.load_checkpoint(path)
        return True
    except Exception as e:  # noqa: BLE001 - whatever the reader says, the file cannot be resumed from
        set_aside(path, f"{type(e).__name__}; training starts from the beginning")
        return False
