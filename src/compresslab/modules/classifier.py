"""The LightningModule every run trains with: cross-entropy classification of a plain nn.Module.

Compressed fine-tuning and distillation subclass it and change only what differs (the loss, or a
hook that keeps pruned weights at zero), so the optimiser, schedule and metrics stay one definition.
"""

from __future__ import annotations

import math
import warnings

import pytorch_lightning as pl
import torch
import torchmetrics
from torch import nn
from torch.nn import functional as F

from compresslab.errors import ConfigError, diverged

# Lightning notes that the module's transfer hook wins over the data module's: intended here.
warnings.filterwarnings("ignore", message=r".*overridden `transfer_batch_to_device` in `LightningModule`.*")

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
# Where torch's fused optimizer kernels run (train.optimizer.fused): one pass over all parameters per
# step instead of a dozen small ops per tensor, about a quarter of a LeNet-300-100 epoch on CPU.
FUSED_DEVICES = ("cpu", "cuda")
PER_STEP_SCHEDULES = ("onecycle",)  # schedules that step every batch and need the fit's step count


class Classifier(pl.LightningModule):
    """Lightning's automatic optimisation, one batch per optimizer step: gradient clipping
    (trainer.gradient_clip_val), accumulation, precision and schedules are the Trainer's own."""

    def __init__(self, model: nn.Module, num_classes: int, optimizer: dict, scheduler: dict | None = None,
                 epochs: int = 1):
        super().__init__()
        self.model = model
        self.optimizer_cfg = dict(optimizer)
        self.scheduler_cfg = dict(scheduler or {"name": "none"})
        self.epochs = epochs
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

    def forward(self, x):
        return self.model(x)

    def loss(self, logits, x, y):
        return F.cross_entropy(logits, y)

    def training_loss(self, batch):
        x, y = batch
        return self.loss(self(x), x, y)

    def training_step(self, batch, batch_idx):
        loss = self.training_loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False,
                 prog_bar=self.trainer.progress_bar_callback is not None)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # Reading the loss back is a device sync: checked only at the steps Lightning logs.
        every = self.trainer.log_every_n_steps
        if every and self.global_step % every == 0 and not torch.isfinite(outputs["loss"]):
            raise diverged(f"at step {self.global_step}, epoch {self.current_epoch}")

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # TensorBatches already yields tensors on the training device: skip Lightning's per-step
        # walk over the batch unless something does need to move.
        if isinstance(batch, (tuple, list)) and all(
                isinstance(t, torch.Tensor) and t.device == device for t in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _evaluate(self, batch, accuracy, stage):
        x, y = batch
        logits = self(x)
        accuracy.update(logits, y)
        # sync_dist: under DDP each rank holds its share of the split (a no-op on one device)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, batch_size=len(y), sync_dist=True)
        self.log(f"{stage}/acc", accuracy, on_epoch=True, prog_bar=stage == "val")

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, self.val_acc, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, self.test_acc, "test")

    def configure_optimizers(self):
        steps = None
        if self.scheduler_cfg.get("name") in PER_STEP_SCHEDULES:
            # Optimizer steps of the whole fit (accumulation and limit_train_batches counted); it
            # loads the training data if need be.
            steps = self.trainer.estimated_stepping_batches
        return build_optimizer(self.model.parameters(), self.optimizer_cfg, self.scheduler_cfg, self.epochs,
                               total_steps=steps)


def build_optimizer(params, optimizer: dict, scheduler: dict, epochs: int, total_steps: int | None = None):
    """The optimiser of `optimizer` (with `lr` as the peak rate) and the schedule of `scheduler`, in
    the form configure_optimizers returns. `onecycle` steps every batch, so it needs `total_steps`."""
    opt = dict(optimizer)
    name = opt.pop("name", "adam")
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer {name!r} is unknown; choose one of {sorted(OPTIMIZERS)}")
    if opt.get("lr", 1e-3) <= 0:
        raise ConfigError(f"optimizer lr={opt.get('lr')} must be positive")
    if name != "sgd":
        opt.pop("momentum", None)
    params = list(params)
    if opt.get("fused") and not all(p.device.type in FUSED_DEVICES for p in params):
        opt.pop("fused")  # e.g. an accelerator torch has no fused kernels for: the per-tensor loop
    return with_schedule(OPTIMIZERS[name](params, **opt), scheduler, epochs, total_steps,
                         peak_lr=opt.get("lr", 1e-3))


def with_schedule(optim, scheduler: dict, epochs: int, total_steps: int | None = None, peak_lr: float = 1e-3):
    """`optim` with the schedule of `scheduler`, in the form configure_optimizers returns; `peak_lr`
    is onecycle's maximum."""
    sched = dict(scheduler)
    kind = sched.pop("name", "none")
    if kind in ("none", None):
        return optim
    if kind == "cosine":
        lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=max(1, epochs))
    elif kind == "step":
        lr_sched = torch.optim.lr_scheduler.StepLR(optim, step_size=sched.get("step_size", 10),
                                                   gamma=sched.get("gamma", 0.1))
    elif kind == "onecycle":
        if not total_steps or not math.isfinite(total_steps):
            raise ConfigError("scheduler onecycle needs a known number of training steps (a finite epoch length)")
        # Warm-up then cosine annealing, per batch (Smith & Topin 2019): the same budget reaches a lower
        # error than a per-epoch cosine for long, heavily regularised runs such as dropout teachers.
        lr_sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=peak_lr, total_steps=int(total_steps),
                                                       pct_start=sched.get("pct_start", 0.3))
        return {"optimizer": optim, "lr_scheduler": {"scheduler": lr_sched, "interval": "step"}}
    else:
        raise ConfigError(f"scheduler {kind!r} is unknown; choose none, cosine, step or onecycle")
    return {"optimizer": optim, "lr_scheduler": {"scheduler": lr_sched, "interval": "epoch"}}
