"""Trainer construction, fitting and evaluation: the one place every run's training goes through."""

from __future__ import annotations

import csv
import logging
import random
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_only

from compresslab import checks
from compresslab.errors import diverged, nonfinite
from compresslab.files import atomic_write, set_aside, torch_bytes
from compresslab.loggers import metrics_csv
from compresslab.modules import Classifier

log = logging.getLogger(__name__)

# The keys of `trainer.*` handed to Lightning's Trainer as they are.
TRAINER_KEYS = ("accelerator", "devices", "strategy", "precision", "num_nodes", "log_every_n_steps",
                "enable_progress_bar", "num_sanity_val_steps", "benchmark", "gradient_clip_val",
                "gradient_clip_algorithm", "accumulate_grad_batches",
                "limit_train_batches", "limit_val_batches", "check_val_every_n_epoch")


def is_rank_zero() -> bool:
    """False in the other processes of a DDP job: they train, rank 0 alone writes and reports."""
    return rank_zero_only.rank == 0


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


class ResumeState(pl.Callback):
    """What a fit resumed from its last checkpoint needs beyond Lightning's own state (weights,
    optimizer, schedules, loop position) to go on as if never stopped: the random number
    generators' states (dropout draws from them), the training time spent so far, and how many
    rows the CSV log had (the rows logged after the checkpoint are logged again when the
    resumed fit redoes those steps)."""

    def __init__(self):
        self.before_s, self.started, self.rng, self.csv_rows = 0.0, None, None, None

    def setup(self, trainer, pl_module, stage):
        self.started = time.perf_counter()

    def train_time_s(self) -> float:
        """Seconds in fit over every attempt of this fit, the current one up to now."""
        return self.before_s + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def on_train_start(self, trainer, pl_module):
        if self.rng is not None:  # here, not at loading: nothing may draw between this and the first batch
            set_rng_states(self.rng)
            self.rng = None
        if self.csv_rows is not None and is_rank_zero():  # only a fit that trains on: not one already done
            for logger, rows in zip(csv_loggers(trainer), self.csv_rows):
                truncate_csv(logger, rows)
            self.csv_rows = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["csv_rows"] = [csv_row_count(logger) for logger in csv_loggers(trainer)]

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        self.csv_rows = checkpoint.get("csv_rows")

    def state_dict(self):
        return {"train_time_s": self.train_time_s(), "rng": rng_states()}

    def load_state_dict(self, state_dict):
        self.before_s, self.rng = float(state_dict["train_time_s"]), state_dict["rng"]


def csv_loggers(trainer) -> list[CSVLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, CSVLogger)]


def csv_row_count(logger: CSVLogger) -> int:
    logger.save()
    path = metrics_csv(logger)
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        return sum(1 for _ in csv.DictReader(f))


def truncate_csv(logger: CSVLogger, rows: int) -> None:
    """Keep the first `rows` rows of the logger's metrics.csv."""
    logger.save()
    path = metrics_csv(logger)
    if not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, kept = reader.fieldnames, list(reader)[:rows]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(kept)


def rng_states() -> dict:
    """The generators' states as tensors and plain values (Lightning loads checkpoints weights-only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def fit(cfg, module: pl.LightningModule, dm, out_dir: Path, epochs: int, loggers=(), callbacks=(),
        checkpoints: bool = True) -> dict:
    """Train `module` for `epochs`; resumes from `out_dir/checkpoints/last.ckpt` if a previous
    attempt of this job left one (the callbacks' state included). Returns val_acc (None without a
    validation split) and train_time_s (of every attempt)."""
    if epochs <= 0:
        return {"val_acc": None, "train_time_s": 0.0}
    state = ResumeState()
    trainer = make_trainer(cfg, out_dir, epochs, loggers, checkpoints, dm.has_val, [*callbacks, state])
    last = Path(out_dir) / "checkpoints" / "last.ckpt"
    resume = checkpoints and last.is_file() and _readable(trainer, last)
    log.info("training %d epochs -> %s%s", epochs, out_dir, f" (resuming from {last})" if resume else "")
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
    elapsed = state.train_time_s()
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
