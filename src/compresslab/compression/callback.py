"""`CompressionCallback`: compress a model while Lightning trains it, and keep it compressed.

It works with any LightningModule, through Lightning's public callback hooks only: it compresses
the module's submodule `submodule` (a Classifier's `model`; None: the whole LightningModule).
Usage::

    from compresslab.compression import CompressionCallback
    cb = CompressionCallback(cfg.method, submodule="model")   # the flat method config (conf/method/*.yaml)
    trainer = make_trainer(cfg, out_dir, epochs, callbacks=[cb])   # or training.fit(..., callbacks=[cb])
    trainer.fit(module, datamodule=dm)
    # module.model is now compressed at the configured targets; cb.history says when what happened.

What it does:
- The fit's epochs are split evenly among the transforms of `method.pipeline` (or of `transforms=`);
  each transform starts at the first optimizer step of its share (prune then quantize = Deep
  Compression). Steps are optimizer steps (`trainer.global_step`); an epoch has
  ceil(num_training_batches / accumulate_grad_batches) of them.
- clip: one shot. prune: `schedule=oneshot`, `iterative` (`rounds` prune steps evenly from the start
  of the share to `prune_end` of it, each round removing the same fraction of what is left), or
  `gradual` (Zhu & Gupta's cubic schedule, masks updated every `prune_every` steps from `prune_start`
  until `prune_end` of the share). After `prune_end` the pruned model recovers at its final sparsity.
- quantize: with `qat=true` the scales (or k-means clusters) are fixed from the float weights, the
  forward pass sees the quantized weights and the gradient updates the float (latent) weights, which
  start from the float weights themselves (straight-through estimator; for kmeans, each weight keeps
  its cluster and the centroid follows the cluster's mean); with `qat=false` the share trains in
  float and the weights are quantized at its end.
- `method.layers` gives layers their own rate / quality / bits / quantizer (compression/layers.py):
  each group of layers with one setting is pruned and quantized by itself, on the same schedule.
- prune with `quality`: a round zeroes |w| <= q x the layer's std, the std taken when the pruning
  stage starts (Han et al. 2015); iterative round r of R uses q = quality x r / R, so the threshold
  rises to quality x std by the last round and each round also takes what retraining moved below it. Neuron pruning leaves the output layer alone unless `include` names it.
- Zeros stay zero: every pruned/clipped weight (and every weight already zero when a stage starts)
  is re-zeroed after every optimizer step (`on_train_batch_end`).
- When the fit ends (`on_fit_end`), every transform not reached yet is applied at its final target,
  and the quantized weights are written back onto their grid, so the module is left compressed and
  plain (no hooks, no extra parameters: its state_dict keys never change).
- Its state (masks, quantization grids, schedule position, history) goes into Lightning
  checkpoints (`state_dict` / `load_state_dict`): a fit resumed from one goes on where it stopped.
  Between optimizer steps, and so in every checkpoint, the model holds its float (latent) weights.

`apply_all(model)` applies the whole pipeline at once, without training (fine-tuning of 0 epochs).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re

import torch
from pytorch_lightning.callbacks import Callback

from compresslab.compression import functional as F
from compresslab.compression.config import parse
from compresslab.compression.layers import PRUNE_KEYS, QUANT_KEYS, groups, prune_targets
from compresslab.compression.transforms import (QuantSpec, apply_masks_, clip_, nonzero_masks, prune_,
                                                quantization_of, quantize_, requantize, targets)
from compresslab.errors import ConfigError

log = logging.getLogger(__name__)


class CompressionCallback(Callback):
    def __init__(self, method_cfg, transforms=None, submodule: str | None = None):
        self.config = parse(method_cfg)
        self.transforms = list(transforms or self.config.pipeline)
        self.submodule = submodule
        self.masks: dict[str, torch.Tensor] = {}
        self.qat_specs: dict = {}       # quantization being fine-tuned (latent weights in float)
        self._latent: dict[str, torch.Tensor] = {}
        self.history: list[dict] = []   # {step, transform, target, sparsity}: what was applied when
        self._begun: set[int] = set()
        self._finished: set[int] = set()
        self._scheduled_step = -1       # the last optimizer step whose schedule has been applied
        self._rounds_at: list[int] = []
        self._agp: tuple | None = None
        self._restored: dict | None = None
        self._pruned_final = False      # the prune stage reached its final target
        self._std: dict[str, float] = {}  # each pruned layer's std when its stage began (quality thresholds)
        self.model = None

    # -- whole pipeline, no training ---------------------------------------------------------
    def apply_all(self, model) -> None:
        """Apply every transform of the pipeline at its final target, now."""
        self.model = model
        for i in range(len(self.transforms)):
            self._begin(i, step=0, stage_steps=0)
        self._finish_all()

    # -- Lightning hooks -----------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage):
        self.model = pl_module.get_submodule(self.submodule) if self.submodule else pl_module

    def on_fit_start(self, trainer, pl_module):
        if self._restored is not None:  # the checkpoint's state, now that the model is known
            self._restore(self._restored)
            self._restored = None

    def on_train_start(self, trainer, pl_module):
        batches = trainer.num_training_batches
        spe = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else 0
        n, epochs = len(self.transforms), max(1, trainer.max_epochs or 1)
        starts = [i * epochs // n * spe for i in range(n)] + [epochs * spe]
        self._bounds = list(zip(starts[:-1], starts[1:]))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        if step != self._scheduled_step:  # once per optimizer step (several batches when accumulating)
            self._scheduled_step = step
            self._schedule(step)
        self._swap_in()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self._swap_out()  # the gradient was taken at the quantized weights; it updates the latent ones

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._swap_out()
        apply_masks_(self.model, self.masks)

    def on_validation_start(self, trainer, pl_module):
        if self.model is not None:
            self._swap_in()

    def on_validation_end(self, trainer, pl_module):
        self._swap_out()

    def on_fit_end(self, trainer, pl_module):
        # Also after a fit that resumed from the checkpoint of its last epoch and so trained no more.
        for i in range(len(self.transforms)):
            if i not in self._begun:
                self._begin(i, trainer.global_step, 0)
        self._finish_all()

    def state_dict(self) -> dict:
        return {"masks": {n: m.detach().cpu() for n, m in self.masks.items()},
                "qat_specs": {n: dataclasses.asdict(s) for n, s in self.qat_specs.items()},
                "quantization": {n: dataclasses.asdict(s) for n, s in quantization_of(self.model).items()}
                if self.model is not None else {},
                "history": list(self.history), "begun": sorted(self._begun), "finished": sorted(self._finished),
                "scheduled_step": self._scheduled_step, "rounds_at": list(self._rounds_at),
                "agp": list(self._agp) if self._agp else None, "pruned_final": self._pruned_final,
                "std": dict(self._std)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = state_dict

    def _restore(self, state: dict) -> None:
        device = next(self.model.parameters()).device
        self.masks = {n: m.to(device) for n, m in state["masks"].items()}
        self.qat_specs = {n: QuantSpec(**s) for n, s in state["qat_specs"].items()}
        quantization_of(self.model).update({n: QuantSpec(**s) for n, s in state["quantization"].items()})
        self.history = list(state["history"])
        self._begun, self._finished = set(state["begun"]), set(state["finished"])
        self._scheduled_step, self._rounds_at = state["scheduled_step"], list(state["rounds_at"])
        self._agp = tuple(state["agp"]) if state["agp"] else None
        self._pruned_final, self._std = bool(state["pruned_final"]), dict(state["std"])
        if "prune" in self.transforms:  # the groups follow from the config and the model's names
            self._prune_groups = groups(self.config, prune_targets(self.model, self.config), PRUNE_KEYS)

    def _schedule(self, step: int) -> None:
        active = max(i for i, (start, _) in enumerate(self._bounds) if start <= step)
        for i in range(active + 1):
            if i not in self._begun:
                start, end = self._bounds[i]
                if i < active:
                    self._begin(i, step, 0)
                    self._finish(i)
                else:
                    self._begin(i, step, end - start)
        self._scheduled_prune(active, step)

    # -- stages -------------------------------------------------------------------------------
    def _begin(self, i: int, step: int, stage_steps: int) -> None:
        c, name = self.config, self.transforms[i]
        self._begun.add(i)
        sel = dict(include=c.include, exclude=c.exclude)
        # A stage keeps the zeros of earlier ones (and of the model it was given).
        self.masks = {**nonzero_masks(self.model, **sel), **self.masks}
        if name == "clip":
            self.masks = clip_(self.model, c.threshold, c.relative, masks=self.masks, **sel)
            self._record(step, name, c.threshold)
        elif name == "prune":
            self._prune_groups = groups(c, prune_targets(self.model, c), PRUNE_KEYS)
            # Han et al. 2015's threshold: quality x the std of the layer as the stage finds it; the
            # iterative rounds raise it to the full quality as the rate schedule raises the rate
            # (one jump to the full threshold cost LeNet-300-100 0.6 pt of test error).
            self._std = {n: float(p.detach().std()) for n, p in prune_targets(self.model, c).items()}
            if c.schedule == "oneshot" or stage_steps == 0:
                self._prune_round(lambda rate: rate, step, final=True)
            elif c.schedule == "iterative":
                last = int(c.prune_end * stage_steps)  # the last round, leaving the rest to recover
                self._rounds_at = [step + r * last // max(1, c.rounds - 1) for r in range(c.rounds)]
            else:
                n = int((c.prune_end * stage_steps - c.prune_start) // c.prune_every)
                if n < 1:
                    raise ConfigError(f"gradual pruning has {stage_steps} steps to run in, too few for "
                                      f"method.prune_start={c.prune_start} and method.prune_every="
                                      f"{c.prune_every}; lower prune_every or train longer")
                self._agp = (step + c.prune_start, n, c.prune_every)
        elif name == "quantize" and (c.qat and stage_steps > 0):
            params = targets(self.model, **sel)
            floats = {n: p.detach().clone() for n, p in params.items()}
            self._quantize()
            self.qat_specs = {n: s for n, s in quantization_of(self.model).items() if n in params}
            # The latent weights start from the float ones, not from their grid points: started on
            # the grid, a weight must move half a grid step before its code changes, which at the
            # fine-tuning lr few ever do (a 2-bit run ended with every code as post-training left it).
            with torch.no_grad():
                for n in self.qat_specs:
                    params[n].copy_(floats[n])

    def _scheduled_prune(self, active: int, step: int) -> None:
        c = self.config
        if self.transforms[active] != "prune" or active in self._finished:
            return
        if c.schedule == "iterative" and step in self._rounds_at:
            r = self._rounds_at.index(step) + 1
            self._prune_round(lambda rate: F.iterative_sparsity(r, c.rounds, rate), step, final=r == c.rounds,
                              quality_at=lambda q: q * r / c.rounds)
        elif c.schedule == "gradual" and self._agp:
            t0, n, dt = self._agp
            if step >= t0 and (step - t0) % dt == 0 and step <= t0 + n * dt:
                self._prune_round(lambda rate: F.agp_sparsity(step, c.initial_sparsity, rate, t0, n, dt),
                                  step, final=step == t0 + n * dt)

    def _finish(self, i: int) -> None:
        if i in self._finished:
            return
        c, name = self.config, self.transforms[i]
        self._finished.add(i)
        if name == "prune":
            if not self._pruned_final:  # the schedule stopped short (a short fit): reach the target
                self._prune_round(lambda rate: rate, None, final=True)
        elif name == "quantize":
            if self.qat_specs:
                self._bake()
            else:
                self._quantize()

    def _finish_all(self) -> None:
        for i in range(len(self.transforms)):
            self._finish(i)
        self._swap_out()
        apply_masks_(self.model, self.masks)

    # -- transforms ---------------------------------------------------------------------------
    def _prune_round(self, rate_at, step, final: bool, quality_at=lambda q: q) -> None:
        """One pruning round over every group of layers: a rate group to `rate_at(its rate)`, a
        quality group at threshold `quality_at(its quality)` x the layer's std."""
        applied = {}
        for g, names in self._prune_groups:
            if g.quality is not None:
                applied[names[0]] = quality_at(g.quality)
                for n in names:
                    self.masks.update(clip_(self.model, applied[names[0]] * self._std[n], include=[re.escape(n)],
                                            masks=self.masks))
            else:
                applied[names[0]] = rate_at(g.rate)
                self.masks.update(prune_(self.model, applied[names[0]], g.scope, g.structure,
                                         [re.escape(n) for n in names], masks=self.masks,
                                         criterion=g.criterion, seed=g.seed))
        self._pruned_final = self._pruned_final or final
        self._record(step, "prune", _one_or_all(applied))

    def _quantize(self) -> None:
        c = self.config
        self._swap_out()
        apply_masks_(self.model, self.masks)
        applied = {}
        for g, names in groups(c, targets(self.model, c.include, c.exclude), QUANT_KEYS):
            quantize_(self.model, g.bits, g.scale, g.per_channel, g.quantizer, [re.escape(n) for n in names],
                      (), g.kmeans_iters)
            applied[names[0]] = g.bits
        self._record(None, "quantize", _one_or_all(applied))

    def _swap_in(self) -> None:
        """Put the grid values in place for the forward pass; keep the latent weights aside."""
        if self._latent or not self.qat_specs:
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, spec in self.qat_specs.items():
                p = params[name]
                self._latent[name] = p.detach().clone()
                mask = self.masks.get(name, torch.ones_like(p, dtype=torch.bool))
                p.copy_(requantize(p, spec, mask) * mask)

    def _swap_out(self) -> None:
        if not self._latent:
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, w in self._latent.items():
                params[name].copy_(w)
        self._latent = {}

    def _bake(self) -> None:
        self._swap_out()
        self._swap_in()
        self._latent = {}  # the grid values stay: quantization is final
        self.qat_specs = {}

    def _record(self, step, transform: str, target) -> None:
        ws = list(targets(self.model, self.config.include, self.config.exclude).values())
        zeros = sum(int((w == 0).sum()) for w in ws)
        total = sum(w.numel() for w in ws)
        self.history.append({"step": step, "transform": transform, "target": target,
                             "sparsity": zeros / max(1, total)})
        log.info("%s -> target %s, sparsity of the compressed weights %.4f (step %s)",
                 transform, target, zeros / max(1, total), step)


def _one_or_all(applied: dict):
    """A round's target for the history: one value when every group got the same, else {first
    parameter of each group: its value}."""
    values = set(applied.values())
    return values.pop() if len(values) == 1 else applied
