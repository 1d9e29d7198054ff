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
from pytorch_lightning.plugins.precision import MixedPrecision, Precision
from pytorch_lightning.strategies import SingleDeviceStrategy
from torch import nn
from torch.nn import functional as F

from compresslab.data.datamodule import StepBlock
from compresslab.errors import ConfigError, diverged

# Lightning notes that the module's transfer hook wins over the data module's: intended here.
warnings.filterwarnings("ignore", message=r".*overridden `transfer_batch_to_device` in `LightningModule`.*")

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
# Where torch's fused optimizer kernels run (train.optimizer.fused): one pass over all parameters per
# step instead of a dozen small ops per tensor, about a quarter of a LeNet-300-100 epoch on CPU.
FUSED_DEVICES = ("cpu", "cuda")


class Classifier(pl.LightningModule):
    def __init__(self, model: nn.Module, num_classes: int, optimizer: dict, scheduler: dict | None = None,
                 epochs: int = 1):
        super().__init__()
        self.model = model
        self.optimizer_cfg = dict(optimizer)
        self.scheduler_cfg = dict(scheduler or {"name": "none"})
        self.epochs = epochs
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        # The step is written out in training_step, as in a hand-written loop: Lightning's automatic
        # optimisation wraps every step in a closure and more hook dispatches, several percent of a
        # small model's epoch on CPU. Around each optimizer step run Lightning's optimizer-step hooks
        # (its backward hooks too, where anything implements them) and the callbacks'
        # on_train_step_start / on_train_step_end (the per-step hooks of this project: a call may
        # take several batches, see StepBlock).
        self.automatic_optimization = False
        self.gradient_clip_val: float | None = None  # set from trainer.gradient_clip_val by training.fit
        self._plain_backward = False  # decided when training starts

    def __setattr__(self, name, value):
        # Lightning records the running hook's name on the module around each of the ~20 hook calls
        # of a step; nn.Module's __setattr__ checks every assignment against parameters, buffers and
        # submodules. A str is none of those, so it goes straight into the instance dict (where
        # nn.Module would have put it too).
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x):
        return self.model(x)

    def loss(self, logits, x, y):
        return F.cross_entropy(logits, y)

    def training_loss(self, batch):
        x, y = batch
        return self.loss(self(x), x, y)

    def training_step(self, batch, batch_idx):
        # A StepBlock holds several batches (trainer.steps_per_call): each gets its own optimizer
        # step, schedule step and per-step callback hooks, exactly as if Lightning had handed them
        # over one by one; Lightning's own per-call work is paid once for the block.
        batches = batch if isinstance(batch, StepBlock) else (batch,)
        optimizer = self.optimizers()
        trainer = self.trainer
        starts = [cb.on_train_step_start for cb in trainer.callbacks if hasattr(cb, "on_train_step_start")]
        ends = [cb.on_train_step_end for cb in trainer.callbacks if hasattr(cb, "on_train_step_end")]
        per_step_schedules = [c.scheduler for c in trainer.lr_scheduler_configs if c.interval == "step"]
        log_every, first_step, logged = trainer.log_every_n_steps, self.global_step, None
        for step, b in enumerate(batches, start=first_step):
            for hook in starts:
                hook(trainer, self)
            loss = self.training_loss(b)
            optimizer.zero_grad()
            if self._plain_backward:
                loss.backward()
            else:
                self.manual_backward(loss)
            if self.gradient_clip_val:
                self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val)
            optimizer.step()
            for schedule in per_step_schedules:
                schedule.step()
            for hook in ends:
                hook(trainer, self)
            if log_every and (step + 1) % log_every == 0:  # Lightning's cadence, counted in optimizer steps
                logged = loss.detach()
                self.log_train_loss(logged, step)
        # Lightning counts one logging step per call; the loggers' step axis (validation metrics
        # included) stays in optimizer steps when it counts the whole block.
        trainer.fit_loop.epoch_loop._batches_that_stepped += len(batches) - 1
        if logged is not None:
            # For the progress bar and callback_metrics (fit's final divergence check). `self.log`
            # costs about a millisecond (it moves its bookkeeping to the value's device each call),
            # so only calls with a logged step pay it.
            self.log("train/loss", logged, on_step=True, on_epoch=False, logger=False,
                     prog_bar=trainer.progress_bar_callback is not None)
        return loss

    def on_train_start(self):
        self._plain_backward = plain_backward_suffices(self.trainer)

    def on_train_epoch_end(self):
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == "epoch":
                config.scheduler.step()

    def log_train_loss(self, loss: torch.Tensor, step: int) -> None:
        """Hand the loss of optimizer step `step` (0-based) to the loggers, and stop a diverged run.
        Only every `log_every_n_steps`-th step comes here: on a GPU reading the value back is a
        sync. Written straight to the loggers, as Lightning would, with the step it would give."""
        value = float(loss)
        if not math.isfinite(value):
            raise diverged(f"at step {step}, epoch {self.current_epoch}")
        metrics = {"train/loss": value, "epoch": self.current_epoch}
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()

    def train_steps_per_epoch(self) -> int | float:
        """Optimizer steps in one training epoch. Lightning counts training_step calls; a call of a
        TensorBatches loader with steps_per_call > 1 takes that many batches."""
        trainer = self.trainer
        calls = trainer.num_training_batches
        loader = trainer.train_dataloader
        per_call = getattr(loader, "steps_per_call", 1)
        return min(calls * per_call, getattr(loader, "num_batches", math.inf))

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # TensorBatches already yields tensors on the training device: skip Lightning's per-step
        # walk over the batch unless something does need to move.
        if isinstance(batch, StepBlock):
            return StepBlock(self.transfer_batch_to_device(b, device, dataloader_idx) for b in batch)
        if isinstance(batch, (tuple, list)) and all(
                isinstance(t, torch.Tensor) and t.device == device for t in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _evaluate(self, batch, accuracy, stage):
        x, y = batch
        logits = self(x)
        accuracy.update(logits, y)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, batch_size=len(y))
        self.log(f"{stage}/acc", accuracy, on_epoch=True, prog_bar=stage == "val")

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, self.val_acc, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, self.test_acc, "test")

    def configure_optimizers(self):
        steps = None
        # estimated_stepping_batches loads the training data if need be; it counts calls, not steps.
        if self._trainer is not None and math.isfinite(self._trainer.estimated_stepping_batches):
            steps = self.train_steps_per_epoch() * max(1, self._trainer.max_epochs)
        return build_optimizer(self.model.parameters(), self.optimizer_cfg, self.scheduler_cfg, self.epochs,
                               total_steps=steps)


def plain_backward_suffices(trainer: pl.Trainer) -> bool:
    """True when Lightning's manual_backward would do nothing but `loss.backward()` and dispatch
    hooks nobody implements: one device, no loss scaling, no callback or module code on the
    backward hooks. Its dispatch is about 5% of a LeNet-300-100 epoch on CPU."""
    precision = trainer.precision_plugin
    if type(trainer.strategy) is not SingleDeviceStrategy or type(precision) not in (Precision, MixedPrecision) \
            or getattr(precision, "scaler", None) is not None:
        return False
    module = trainer.lightning_module
    hooked = [(type(cb), pl.Callback) for cb in trainer.callbacks] + [(type(module), pl.LightningModule)]
    return type(module).backward is pl.LightningModule.backward and all(
        getattr(cls, hook) is getattr(base, hook)
        for cls, base in hooked for hook in ("on_before_backward", "on_after_backward"))


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
