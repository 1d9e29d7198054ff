"""K classifiers of one architecture trained as one batched model (the stacked launcher's model).

The K models' parameters are stacked into (K, ...) leaf tensors (`torch.func.stack_module_state`)
and one forward pass of all K runs as `vmap` over `functional_call`, each model on its own batch.
The K cross-entropy losses are summed, so each model gets exactly its own gradient; the optimizers
used (SGD, Adam, AdamW) update elementwise, so each slice of a stacked tensor follows exactly the
update its model would get alone. One `training_step` is one optimizer step of all K models: the
per-step cost of Lightning is paid once per stack.

Each model's own nn.Module stays in use: while the stack trains, its parameters are views of its
slice of the stacked tensors, so whatever works on that module in place (the CompressionCallback's
masks and quantization grids, its schedule) works on the stacked model unchanged. When the fit
ends, each module gets its own tensors back.

What would couple the models is computed per model: gradient-norm clipping (one norm per model),
validation metrics, the best checkpoint and the divergence check. Learning rates and weight decays
may differ per model (`StackedOptimizer`).
"""

from __future__ import annotations

import copy
import logging
import math

import pytorch_lightning as pl
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from compresslab.errors import ConfigError, diverged
from compresslab.modules.classifier import OPTIMIZERS, build_optimizer, with_schedule
from compresslab.modules.distill import soft_target_loss

log = logging.getLogger(__name__)


class StackedBatches:
    """Training or evaluation batches of K models at once: batch k of each model's own loader
    (its own order, split and augmentation), stacked to (K, B, ...)."""

    def __init__(self, loaders: list):
        self.loaders = loaders

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self):
        for batches in zip(*self.loaders):
            yield tuple(torch.stack(parts) for parts in zip(*batches))


class ModelSlot(nn.Module):
    """What a per-model callback (e.g. CompressionCallback, which compresses its module's `model`)
    sees as its LightningModule: the model of one slot of the stack."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


class StackedOptimizer(torch.optim.Optimizer):
    """SGD (with momentum), Adam or AdamW over stacked (K, ...) parameters, with each model's own
    learning rate and weight decay: the updates of torch.optim's SGD, Adam and AdamW, written over a
    (K, 1, ...) lr and weight decay. The group's `lr` is the schedule's factor (1 at the start), so
    torch's lr schedules scale every model's rate alike."""

    def __init__(self, params, name: str, lr: torch.Tensor, weight_decay: torch.Tensor,
                 momentum: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
        if name not in OPTIMIZERS:
            raise ConfigError(f"optimizer {name!r} is unknown; choose one of {sorted(OPTIMIZERS)}")
        super().__init__(params, {"lr": 1.0, "momentum": momentum, "betas": tuple(betas), "eps": eps})
        self.name = name
        self.model_lr, self.model_wd = lr, weight_decay

    def _per_model(self, values: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return values.to(p.device, p.dtype).view(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                lr = self._per_model(self.model_lr, p) * group["lr"]
                wd = self._per_model(self.model_wd, p)
                g, state = p.grad, self.state[p]
                if self.name == "sgd":
                    g = g + wd * p
                    if group["momentum"]:
                        if "momentum_buffer" not in state:
                            state["momentum_buffer"] = g.clone()
                        else:
                            state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                        g = state["momentum_buffer"]
                    p.sub_(lr * g)
                    continue
                if self.name == "adamw":
                    p.mul_(1 - lr * wd)
                else:
                    g = g + wd * p
                b1, b2 = group["betas"]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                bias1, bias2 = 1 - b1 ** state["step"], 1 - b2 ** state["step"]
                denom = (v.sqrt() / math.sqrt(bias2)).add_(group["eps"])
                p.sub_((lr / bias1) * m / denom)
        return loss


class StackedClassifier(pl.LightningModule):
    """Trains `models` (one architecture) together. `optimizers`: each model's optimizer config
    (they may differ in lr and weight_decay only); `scheduler` and `epochs` are shared.
    `callbacks[k]`: model k's own per-model callbacks (the hooks of a Lightning callback, called
    with model k's ModelSlot). The Trainer's gradient_clip_val clips each model's norm on its own."""

    def __init__(self, models: list[nn.Module], num_classes: int, optimizers: list[dict], scheduler: dict,
                 epochs: int, callbacks: list[list] | None = None, loggers: list[list] | None = None, log_every_n_steps: int = 50,
                 distillation: list[tuple[float, float]] | None = None):
        super().__init__()
        self.models = list(models)  # a plain list: their tensors are views into the stacked ones
        self.num_classes = num_classes
        self.optimizer_cfgs = [dict(o) for o in optimizers]
        self.scheduler_cfg = dict(scheduler or {"name": "none"})
        self.epochs = epochs
        self.per_model_callbacks = [list(c) for c in (callbacks or [[] for _ in models])]
        # Each model's own loggers (its job's CSV and W&B run): the stack's Trainer has none, as one
        # Trainer's loggers cannot hold K runs.
        self.model_loggers = [list(lg) for lg in (loggers or [[] for _ in models])]
        self.log_every_n_steps = log_every_n_steps
        # Students of a distillation stack: each model's (temperature, soft_weight); their batches
        # carry the teacher's logits (x, y, teacher logits), computed once per input for all of them.
        self.distillation = None
        if distillation is not None:
            temps, weights = zip(*distillation)
            self.distillation = (torch.tensor(temps), torch.tensor(weights))
        params, buffers = stack_module_state(self.models)
        if buffers:
            raise ConfigError("models with buffers (e.g. BatchNorm statistics) have no stacked form; "
                              "run them with the default launcher")
        self.names = list(params)
        # nn.ParameterDict keys cannot hold dots.
        self.stacked = nn.ParameterDict({n.replace(".", "__"): nn.Parameter(t.detach().clone())
                                         for n, t in params.items()})
        # Kept out of the module tree: it only lends its structure to functional_call, and
        # Lightning's device moves would fail on its meta tensors.
        object.__setattr__(self, "template", copy.deepcopy(self.models[0]).to("meta"))
        self.slots = [ModelSlot(m) for m in self.models]
        self.finite = torch.ones(len(self.models), dtype=torch.bool)
        self.failed: dict[int, str] = {}
        self.val_acc: list[float | None] = [None] * len(self.models)
        self.val_loss: list[float | None] = [None] * len(self.models)
        self.best: list[tuple[float, dict] | None] = [None] * len(self.models)
        self._val_sums = None

    # -- the stacked model ------------------------------------------------------------------------
    def params(self) -> dict[str, torch.Tensor]:
        return {n: self.stacked[n.replace(".", "__")] for n in self.names}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (K, B, classes) of K models on their own batches x: (K, B, ...)."""
        def one(params, xb):
            return functional_call(self.template, params, (xb,))

        return vmap(one, randomness="different")(self.params(), x)

    def train(self, mode: bool = True):
        super().train(mode)
        self.template.train(mode)  # dropout follows the stack's mode
        return self

    def alias_models(self) -> None:
        """Make each model's parameters views of its slice of the stacked tensors."""
        self._give_models(lambda t: nn.Parameter(t, requires_grad=False))

    def release_models(self) -> None:
        """Give each model its own (CPU) tensors again, with the trained values."""
        self._give_models(lambda t: nn.Parameter(t.cpu().clone()))

    def _give_models(self, parameter) -> None:
        stacked = self.params()
        for k, model in enumerate(self.models):
            for name, _ in list(model.named_parameters()):
                owner, _, attr = name.rpartition(".")
                setattr(model.get_submodule(owner) if owner else model, attr, parameter(stacked[name].detach()[k]))

    def per_model_losses(self, logits: torch.Tensor, y: torch.Tensor,
                         teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Each model's training loss (K,): cross-entropy, or for students `distillation_loss` with
        their own temperature and soft_weight."""
        k, b = y.shape
        hard = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(k, b).mean(1)
        if self.distillation is None:
            return hard
        temps, weights = (t.to(logits.device, logits.dtype) for t in self.distillation)
        soft = vmap(soft_target_loss)(logits, teacher_logits, temps)
        # As distillation_loss: a term of weight 0 is not counted (no 0 * inf from an overflow).
        zero = torch.zeros_like(hard)
        return torch.where(weights > 0, weights * soft, zero) + torch.where(weights < 1, (1 - weights) * hard, zero)

    # -- per-model callbacks ----------------------------------------------------------------------
    def _call(self, hook: str, *args) -> None:
        for k, callbacks in enumerate(self.per_model_callbacks):
            if k in self.failed:
                continue
            for cb in callbacks:
                fn = getattr(cb, hook, None)
                if fn is not None:
                    fn(self.trainer, self.slots[k], *args)

    def setup(self, stage):
        self._call("setup", stage)

    def on_fit_start(self):
        self.alias_models()  # after Lightning moved the stacked tensors to the training device
        self.finite = self.finite.to(self.device)
        self._call("on_fit_start")

    def on_train_start(self):
        self._call("on_train_start")

    def on_train_batch_start(self, batch, batch_idx):
        self._call("on_train_batch_start", batch, batch_idx)

    def on_before_optimizer_step(self, optimizer):
        self._call("on_before_optimizer_step", optimizer)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self._call("on_train_batch_end", outputs, batch, batch_idx)
        if self.log_every_n_steps and self.global_step % self.log_every_n_steps == 0:
            self.log_per_model({"train/loss": self.last_losses.tolist(), "epoch": self.current_epoch})

    def on_validation_start(self):
        self._call("on_validation_start")

    def on_validation_end(self):
        self._call("on_validation_end")

    def on_fit_end(self):
        self._call("on_fit_end")

    def log_per_model(self, metrics: dict) -> None:
        """Metrics (lists: one value per model) to each model's own loggers, at this step."""
        for k, loggers in enumerate(self.model_loggers):
            if k in self.failed:
                continue
            values = {name: (v[k] if isinstance(v, list) else v) for name, v in metrics.items()}
            for logger in loggers:
                logger.log_metrics(values, step=self.global_step)

    # -- training ---------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, y, *teacher_logits = batch
        losses = self.per_model_losses(self(x), y, *teacher_logits)
        self.finite &= torch.isfinite(losses.detach())
        self.last_losses = losses.detach()
        return losses.sum()

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """trainer.gradient_clip_val per model: clipping by value is elementwise already; the norm is
        each model's own."""
        if not gradient_clip_val:
            return
        if gradient_clip_algorithm == "value":
            return self.clip_gradients(optimizer, gradient_clip_val, "value")
        grads = [p.grad for p in self.params().values() if p.grad is not None]
        norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
        # torch.nn.utils.clip_grad_norm_'s rule, one norm per model
        coef = (gradient_clip_val / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))

    def on_train_epoch_end(self):
        self.check_finite(f"in epoch {self.current_epoch}")

    def check_finite(self, where: str) -> None:
        for k in torch.nonzero(~self.finite.cpu()).flatten().tolist():
            if k not in self.failed:
                self.failed[k] = str(diverged(where))
                log.error("stacked model %d diverged %s; the other models go on", k, where)

    def configure_optimizers(self):
        steps = None
        if math.isfinite(self.trainer.estimated_stepping_batches):
            steps = int(self.trainer.estimated_stepping_batches)
        params = list(self.params().values())
        first = self.optimizer_cfgs[0]
        if all(o == first for o in self.optimizer_cfgs):
            return build_optimizer(params, first, self.scheduler_cfg, self.epochs, total_steps=steps)
        varying = {k for o in self.optimizer_cfgs for k, v in o.items() if v != first.get(k)}
        if varying - {"lr", "weight_decay"}:
            raise ConfigError(f"stacked models differ in optimizer keys {sorted(varying)}; only lr and "
                              "weight_decay may differ within a stack")
        lr = torch.tensor([float(o.get("lr", 1e-3)) for o in self.optimizer_cfgs])
        wd = torch.tensor([float(o.get("weight_decay", 0.0)) for o in self.optimizer_cfgs])
        name = first.get("name", "adam")
        optim = StackedOptimizer(params, name, lr, wd, momentum=first.get("momentum", 0.0) if name == "sgd" else 0.0,
                                 betas=first.get("betas", (0.9, 0.999)), eps=first.get("eps", 1e-8))
        return with_schedule(optim, self.scheduler_cfg, self.epochs, steps, peak_lr=1.0)

    # -- validation -------------------------------------------------------------------------------
    def on_validation_epoch_start(self):
        self._val_sums = None

    def validation_step(self, batch, batch_idx):
        x, y = batch[:2]
        logits = self(x)
        k, b = y.shape
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(k, b).sum(1)
        correct = (logits.argmax(-1) == y).sum(1)
        sums = torch.stack([loss.double(), correct.double(), torch.full_like(loss, b, dtype=torch.double)])
        self._val_sums = sums if self._val_sums is None else self._val_sums + sums

    def on_validation_epoch_end(self):
        if self._val_sums is None:
            return
        loss, correct, count = self._val_sums.cpu()
        self.log_per_model({"val/acc": (correct / count).tolist(), "val/loss": (loss / count).tolist(),
                            "epoch": self.current_epoch})
        for k in range(len(self.models)):
            self.val_loss[k] = float(loss[k] / count[k])
            self.val_acc[k] = float(correct[k] / count[k])
            if k not in self.failed and (self.best[k] is None or self.val_acc[k] > self.best[k][0]):
                self.best[k] = (self.val_acc[k], {"epoch": self.current_epoch, "step": self.global_step,
                                                  "state_dict": {f"model.{n}": t.detach()[k].cpu().clone()
                                                                 for n, t in self.params().items()}})
