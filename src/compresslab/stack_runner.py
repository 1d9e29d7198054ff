"""Run a stack of jobs: K jobs' steps (compresslab.steps) served together, each request of the K
jobs by one batched model (modules/stacked.py).

Every job runs its own code (`job.job_steps`): it builds its own model, data and callbacks, writes
its own record, model.pt, artifact, CSV log and W&B run. Only the training and testing are shared:
the K generators advance in lock-step, and each round's K `Fit` (or `Evaluate`) requests are served
as one. Each job keeps its own random-number state between rounds, so what it draws (its initial
weights above all) is what it would draw running alone. A job that fails leaves the stack; the
others go on. Baselines the stack's compressed jobs need and nobody has trained yet are trained
first, as a stack of their own, and cached exactly as a job on its own would cache them.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from compresslab import checks, reuse
from compresslab.data import build_datamodule
from compresslab.errors import CompresslabError, DivergedError, nonfinite
from compresslab.files import atomic_write
from compresslab.job import apply_threads, job_steps
from compresslab.methods.baseline import baseline_spec, train_classifier
from compresslab.methods.distill import teacher_spec
from compresslab.modules import Classifier
from compresslab.modules.distill import Distiller
from compresslab.modules.stacked import StackedBatches, StackedClassifier
from compresslab.steps import Evaluate, Fit
from compresslab.training import make_trainer, rng_states, set_rng_states

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One job of a stack, as the launcher composed it."""
    cfg: object          # the job's config (Hydra's own settings removed)
    out_dir: Path
    overrides: list
    run_name: str
    group: str | None


class RandomState:
    """One job's random-number state (torch, CUDA, numpy, random), kept while other jobs run."""

    def __init__(self):
        self.saved = None

    def __enter__(self):
        if self.saved is not None:
            set_rng_states(self.saved)
        return self

    def __exit__(self, *exc):
        self.saved = rng_states()
        return False


def serve_together(generators: list[Generator], log_files: list[Path] | None = None) -> list:
    """Advance `generators` (job steps) in lock-step, serving each round's requests together;
    returns what each generator returned, in order. What a job's own code logs goes to its
    `log_files` entry too (the stacked training logs to the launcher's log only)."""
    k = len(generators)
    states = [RandomState() for _ in range(k)]
    results: list = [None] * k
    requests: dict[int, object] = {}

    def advance(slot: int, value=None, error: BaseException | None = None, first: bool = False) -> None:
        with states[slot], job_log(log_files[slot] if log_files else None):
            try:
                if first:
                    request = next(generators[slot])
                elif error is not None:
                    request = generators[slot].throw(error)
                else:
                    request = generators[slot].send(value)
            except StopIteration as done:
                results[slot] = done.value
                requests.pop(slot, None)
                return
            except BaseException as e:  # noqa: BLE001 - an interrupt thrown in comes back out
                if error is None or isinstance(e, Exception):
                    raise
                requests.pop(slot, None)  # the job recorded it (status interrupted) on its way out
                return
        requests[slot] = request

    for slot in range(k):
        advance(slot, first=True)
    while requests:
        slots = sorted(requests)
        outcomes = serve([requests[s] for s in slots])
        interrupt = None
        for slot, outcome in zip(slots, outcomes):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    interrupt = outcome  # Ctrl-C: every job records it, then the stack stops
                advance(slot, error=outcome)
            else:
                advance(slot, value=outcome)
        if interrupt is not None:
            raise interrupt
    return results


@contextlib.contextmanager
def job_log(path: Path | None):
    """Copy the log records made meanwhile into the job's own log file."""
    if path is None:
        yield
        return
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def serve(requests: list) -> list:
    """Outcomes (a value, or the exception to throw into that job) of one round's requests: those
    that can share a batched model are served together, the others one by one."""
    outcomes: list = [None] * len(requests)
    groups: dict = {}
    for i, r in enumerate(requests):
        groups.setdefault(together_key(r), []).append(i)
    for key, members in groups.items():
        size = len(members) if key is None else fitting_stack_size([requests[i] for i in members])
        for start in range(0, len(members), max(1, size)):
            part = members[start:start + max(1, size)]
            batch = [requests[i] for i in part]
            if key is None or len(batch) == 1:
                results = [_serve_alone(r) for r in batch]
            else:
                try:
                    results = (stacked_fit if isinstance(batch[0], Fit) else stacked_evaluate)(batch)
                except BaseException as e:  # noqa: BLE001 - every job of the stack records it
                    log.exception("the stacked model failed")
                    results = [e] * len(batch)
            for i, outcome in zip(part, results):
                outcomes[i] = outcome
    return outcomes


def fitting_stack_size(requests: list) -> int:
    """How many of `requests` one stacked model can hold in the device's free memory, by an
    estimate: per model its parameters with gradients and two optimizer moments (4 copies), plus a
    batch's activations and their gradients. A stack over that is split, with a log line."""
    first = requests[0]
    model = first.module.model
    params = sum(p.numel() for p in model.parameters())
    batch = first.dm.batch_size if isinstance(first, Fit) else first.dm.eval_batch_size
    activations = activation_count(model, first.dm.input_shape)
    per_model = 4 * (4 * params + 2 * batch * activations)
    accelerator = str(first.cfg.trainer.get("accelerator", "cpu"))
    free = free_memory_bytes(accelerator)
    budget = int(0.7 * free)
    fitting = max(1, budget // max(1, per_model))
    if fitting < len(requests):
        log.info("a stack of %d models needs about %.1f GiB (%.1f MiB each) of %.1f GiB free on %s: "
                 "split into stacks of %d", len(requests), len(requests) * per_model / 2**30, per_model / 2**20,
                 free / 2**30, accelerator, fitting)
    return fitting


def activation_count(model, input_shape) -> int:
    """Outputs of every leaf module for one input: what a forward pass keeps for its backward."""
    counts = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: counts.append(out.numel()))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return sum(counts)


def free_memory_bytes(accelerator: str) -> int:
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 2**62  # no way to tell here: trust max_models


def _serve_alone(request):
    try:
        return request.run()  # exactly as `steps.execute` serves it
    except BaseException as e:  # noqa: BLE001 - thrown into the job that asked
        return e


def together_key(request) -> tuple | None:
    """Requests with equal keys can be served by one batched model; None: only on its own."""
    model = request.module.model
    if any(True for _ in model.buffers()) or any(isinstance(m, torch.nn.RNNBase) for m in model.modules()):
        return None  # running statistics, recurrent kernels: no stacked form (stacking.NO_STACKED_FORM)
    shapes = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    if isinstance(request, Evaluate):
        return ("evaluate", shapes, len(request.dm.y_test), request.dm.eval_batch_size)
    if request.epochs <= 0:
        return None
    dm = request.dm
    if type(request.module) is Distiller:
        if dm.train_extra is None:  # its teacher runs on each (augmented) batch: per job
            return None
        kind = "distill"
    elif type(request.module) is Classifier:
        kind = "fit"
    else:
        return None
    return (kind, shapes, request.epochs, json.dumps(request.module.scheduler_cfg, sort_keys=True),
            json.dumps(OmegaConf.to_container(request.cfg.trainer, resolve=True), sort_keys=True, default=str),
            len(dm.y_train), len(dm.y_val), dm.batch_size, dm.shift_px)


def stacked_fit(requests: list[Fit]) -> list:
    """Train the K requests' modules as one StackedClassifier; each gets training.fit's result
    ({val_acc, train_time_s}: its share of the stack's time) or its own error."""
    k, first = len(requests), requests[0]
    cfg = first.cfg
    module = StackedClassifier([r.module.model for r in requests], first.dm.num_classes,
                               [r.module.optimizer_cfg for r in requests], first.module.scheduler_cfg,
                               first.epochs, callbacks=[list(r.callbacks) for r in requests],
                               loggers=[list(r.loggers) for r in requests],
                               log_every_n_steps=int(cfg.trainer.get("log_every_n_steps") or 0),
                               distillation=[(r.module.temperature, r.module.soft_weight) for r in requests]
                               if isinstance(first.module, Distiller) else None)
    train = StackedBatches([r.dm.train_dataloader() for r in requests])
    val = StackedBatches([r.dm.val_dataloader() for r in requests]) if first.dm.has_val else None
    trainer = make_trainer(cfg, Path(first.out_dir), first.epochs, checkpoints=False, has_val=val is not None,
                           finite_check=False)
    log.info("training %d models as one stacked model", k)
    start = time.perf_counter()
    try:
        trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    finally:
        module.release_models()
    elapsed = time.perf_counter() - start
    module.check_finite("by the end of training")
    outcomes = []
    for slot, r in enumerate(requests):
        if slot in module.failed:
            outcomes.append(DivergedError(module.failed[slot]))
            continue
        bad = checks.nonfinite_parameters(r.module.model)
        if bad:
            outcomes.append(nonfinite(f"weights are ({', '.join(bad[:3])})", "at the end of training"))
            continue
        _write_outputs(r, module, slot)
        outcomes.append({"val_acc": module.val_acc[slot], "train_time_s": elapsed / k})
    return outcomes


def _write_outputs(request: Fit, module: StackedClassifier, slot: int) -> None:
    """The model's logs flushed and its best weights where a job on its own puts them."""
    for logger in request.loggers:
        logger.save()
    if request.checkpoints and module.best[slot] is not None:
        acc, payload = module.best[slot]
        buffer = io.BytesIO()
        torch.save({**payload, "val_acc": acc}, buffer)
        atomic_write(Path(request.out_dir) / "checkpoints" / "best.pt", buffer.getvalue())


@torch.no_grad()
def stacked_evaluate(requests: list[Evaluate]) -> list:
    """Test accuracy and loss of K models at once, each on its own (normalised) test split."""
    models = [r.module.model for r in requests]
    accelerator = str(requests[0].cfg.trainer.get("accelerator", "cpu"))
    device = torch.device("cuda" if accelerator in ("gpu", "cuda") and torch.cuda.is_available() else "cpu")
    module = StackedClassifier(models, requests[0].dm.num_classes, [{}] * len(models), {}, 1).to(device)
    module.eval()
    test = StackedBatches([r.dm.test_dataloader() for r in requests])
    sums = None
    for x, y in test:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = module(x)
        k, b = y.shape
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(),
                                                 reduction="none").view(k, b).double().sum(1)
        correct = (logits.argmax(-1) == y).sum(1).double()
        batch = torch.stack([loss, correct, torch.full_like(loss, b)])
        sums = batch if sums is None else sums + batch
    loss, correct, count = sums.cpu()
    outcomes = []
    for i in range(len(models)):
        metrics = {"test_acc": float(correct[i] / count[i]), "test_loss": float(loss[i] / count[i])}
        bad = checks.nonfinite_values(metrics)
        outcomes.append(nonfinite(f"the evaluation gave {', '.join(bad)}:", "on the test split") if bad else metrics)
    return outcomes


# ---------------------------------------------------------------------------------------------
# Trained-once models first: the baselines and teachers the stack's jobs need and nobody has trained.

def train_missing_models(members: list[Member]) -> None:
    """Train, as stacks, the trained-once baselines and teachers that the members need and the
    cache lacks; the jobs then find them cached, as if an earlier job had trained them."""
    for kind, spec_of in (("baseline", baseline_spec), ("teacher", teacher_spec)):
        wanted = {}
        for m in members:
            found = spec_of(m.cfg)
            if found is not None:
                wanted.setdefault(reuse.key_of(found[0]), found)
        if not wanted:
            continue

        def train_all(claimed: list[tuple[dict, Path]], wanted=wanted, kind=kind) -> None:
            chosen = [(wanted[reuse.key_of(spec)], directory) for spec, directory in claimed]
            log.info("training %d %s models as one stack before the jobs that need them", len(chosen), kind)
            serve_together([trained_once_steps(run_cfg, model_cfg, train_cfg, directory)
                            for (_, run_cfg, model_cfg, train_cfg), directory in chosen])

        cache_dir = Path(members[0].cfg.paths.cache_dir)
        reuse.train_missing_together(cache_dir, kind, [found[0] for found in wanted.values()], train_all)


def trained_once_steps(cfg, model_cfg, train_cfg, directory: Path):
    """What a job on its own does to train a missing baseline or teacher (baseline.obtain_trained):
    seeded as the job is, on the job's data, into the cache dir."""
    apply_threads(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg)
    dm.setup()
    try:
        yield from train_classifier(cfg, dm, model_cfg, train_cfg, directory)
    except CompresslabError as e:
        log.error("training %s failed (%s); the jobs that need it will say so", directory, e)


def run_stack(members: list[Member], label: str) -> list[dict]:
    """Run `members` as one stack; returns their records (each also written to its job dir)."""
    train_missing_models(members)
    gens = [job_steps(m.cfg, m.out_dir, m.overrides, m.run_name, m.group,
                      stack={"id": label, "size": len(members), "slot": slot})
            for slot, m in enumerate(members)]
    return serve_together(gens, [Path(m.out_dir) / "train.log" for m in members])
