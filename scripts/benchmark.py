#!/usr/bin/env python
"""How much time compresslab adds to training, and what compression buys at inference.

    python scripts/benchmark.py                 # CPU, full (tens of minutes on a busy 2-core host)
    python scripts/benchmark.py --quick         # about a minute on an idle machine
    python scripts/benchmark.py --device cuda --bf16 --channels-last --parallel-jobs 8
    python scripts/benchmark.py --only epoch,inference

Measured side by side in one run (every figure is a median of interleaved repetitions, as the
machine may be shared and its load changes under us; ratios of neighbouring runs are what count):

- epoch:     per-epoch training time of a compresslab baseline (Classifier + make_trainer/fit +
             TensorDataModule, with the job's checkpoints and CSV + offline W&B loggers: Lightning's
             automatic optimisation, one batch per optimizer step) vs a minimal hand-written loop on
             the same model, data, batch size and device.
- startup:   a fresh `python -m compresslab.train` process: start to first training step.
- multirun:  a sequential multirun: each job's time beyond its training epochs.
- sweep:     a 5-rate prune sweep reusing one baseline vs 5 independent prune jobs.
- parallel:  the same jobs one after another vs `hydra/launcher=parallel` (n jobs at once); beside it
             the same training as raw loops in separate processes, n at once vs one after another:
             the ceiling the cores and memory allow, whatever the framework does.
- stacked:   a whole prune-rate x seed sweep, sequential vs `hydra/launcher=stacked`
             (scripts/bench_stacked.py; its own flags there).
- inference: latency of dense vs pruned (dense and sparse CSR storage) vs dynamically quantized
             int8 models, batch 1 and 256, on CPU.

Writes outputs/benchmark/<time>/benchmark.json and benchmark.md, and appends the Markdown (with
date, machine and load) to BENCHMARKS.md. Torch is imported lazily: `--probe` runs one training
entry point with timestamps, and must not pay for imports the job would not make.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("epoch", "startup", "multirun", "sweep", "parallel", "inference", "stacked")
PRUNE_RATES = (0.5, 0.6, 0.7, 0.8, 0.9)


# ---------------------------------------------------------------------------------------------
# Small helpers

def median(xs):
    return statistics.median(xs) if xs else None


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine(device: str) -> dict:
    import torch

    info = {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": device}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def job_env(root: Path) -> dict:
    """Environment of a job subprocess: a fresh project root (outputs, caches), the shared data."""
    return {**os.environ, "COMPRESSLAB_ROOT": str(root),
            "COMPRESSLAB_DATA_DIR": os.environ.get("COMPRESSLAB_DATA_DIR", str(REPO / "data")),
            "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}


def run_probe(overrides: list[str], root: Path, multirun: bool = False, timeout: int = 1800) -> dict:
    """Run the training entry point (through `--probe`) in a fresh process; returns its events
    (seconds since this call started the process) and the process's wall time."""
    events = root / f"events-{time.time_ns()}.jsonl"
    args = [sys.executable, str(Path(__file__).resolve()), "--probe", str(events), "--",
            *(["-m"] if multirun else []), *overrides]
    t0 = time.time()
    proc = subprocess.run(args, cwd=root, env=job_env(root), capture_output=True, text=True, timeout=timeout)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"job failed ({proc.returncode}): {' '.join(overrides)}\n{proc.stderr[-2000:]}")
    found = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    return {"wall_s": wall, "events": [{**e, "t": e["t"] - t0} for e in found]}


def run_entry(overrides: list[str], root: Path, multirun: bool = False, timeout: int = 3600) -> tuple[float, float]:
    """Wall time and CPU time (its own and its children's) of a plain `python -m compresslab.train`."""
    args = [sys.executable, "-m", "compresslab.train", *(["-m"] if multirun else []), *overrides]
    t0, c0 = time.time(), children_cpu()
    proc = subprocess.run(args, cwd=root, env=job_env(root), capture_output=True, text=True, timeout=timeout)
    wall, cpu = time.time() - t0, children_cpu() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"job failed ({proc.returncode}): {' '.join(overrides)}\n{proc.stderr[-2000:]}")
    return wall, cpu


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------------------
# --probe: the real entry point, with timestamps of a job's stages appended to a JSONL file

def probe_main(events_file: str, argv: list[str]) -> None:
    def emit(event: str, **extra):
        with open(events_file, "a") as f:
            f.write(json.dumps({"event": event, "t": time.time(), "cpu": time.process_time(), "pid": os.getpid(),
                                **extra}) + "\n")

    emit("process")
    import pytorch_lightning as pl

    import compresslab.job
    import compresslab.training

    class Stages(pl.Callback):
        def __init__(self):
            self.first = True

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if self.first:
                emit("first_step")
                self.first = False

        def on_train_epoch_start(self, trainer, pl_module):
            emit("epoch_start")

        def on_train_epoch_end(self, trainer, pl_module):
            emit("epoch_end")

    make_trainer, run_job = compresslab.training.make_trainer, compresslab.job.run_job

    def probed_make_trainer(cfg, out_dir, epochs, loggers=(), checkpoints=True, has_val=True, callbacks=()):
        return make_trainer(cfg, out_dir, epochs, loggers, checkpoints, has_val, [*callbacks, Stages()])

    def probed_run_job(*args, **kwargs):
        emit("job_start")
        try:
            return run_job(*args, **kwargs)
        finally:
            emit("job_end")

    compresslab.training.make_trainer = probed_make_trainer
    compresslab.job.run_job = probed_run_job
    sys.argv = ["compresslab.train", *argv]
    from compresslab.train import main

    main()


# ---------------------------------------------------------------------------------------------
# epoch: compresslab vs a hand-written loop, in this process

def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from compresslab.train import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RawLoop:
    """What a researcher writes by hand: tensors in memory (on the device), a permuted index per
    epoch, forward, cross-entropy, backward, step; the same optimiser and schedule as the job.
    Each `epoch()` trains one epoch and returns its (wall, CPU) seconds."""

    def __init__(self, cfg, dm, epochs: int, device, bf16: bool = False, channels_last: bool = False):
        import torch
        from omegaconf import OmegaConf

        from compresslab.models import build_model
        from compresslab.modules.classifier import build_optimizer

        torch.manual_seed(cfg.seed)
        model = build_model(OmegaConf.to_container(cfg.model, resolve=True), dm.input_shape, dm.num_classes)
        self.model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
        built = build_optimizer(self.model.parameters(), OmegaConf.to_container(cfg.train.optimizer, resolve=True),
                                OmegaConf.to_container(cfg.train.scheduler, resolve=True), epochs)
        self.opt = built["optimizer"] if isinstance(built, dict) else built
        self.sched = built["lr_scheduler"]["scheduler"] if isinstance(built, dict) else None
        self.x, self.y = dm.x_train.to(device), dm.y_train.to(device)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.batch_size, self.device, self.bf16 = dm.batch_size, device, bf16

    def epoch(self) -> tuple[float, float]:
        import torch
        from torch.nn import functional as F

        model, opt, x, y, bs = self.model, self.opt, self.x, self.y, self.batch_size
        sync(self.device)
        t, c = time.perf_counter(), time.process_time()
        model.train()
        order = torch.randperm(len(y), generator=self.generator).to(self.device)
        for start in range(0, len(y), bs):
            idx = order[start:start + bs]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if self.sched is not None:
            self.sched.step()
        sync(self.device)
        return time.perf_counter() - t, time.process_time() - c


def compresslab_fit(cfg, dm, epochs: int,
                    raw: RawLoop | None = None) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(wall, CPU) seconds of each epoch of `compresslab.training.fit` on a Classifier, as a baseline job runs it
    (checkpoints, CSV + offline W&B loggers), and of an epoch of `raw` run right after each of them:
    the pairs are seconds apart, so a host that slows down for a while slows both sides of a pair
    (this machine is shared: epoch times drift by ±20% within a minute)."""
    import pytorch_lightning as pl
    import torch
    from omegaconf import OmegaConf

    from compresslab.loggers import finish, job_loggers
    from compresslab.models import build_model
    from compresslab.modules import Classifier
    from compresslab.training import fit

    class EpochTimes(pl.Callback):
        def __init__(self):
            self.times, self.raw_times = [], []

        def on_train_epoch_start(self, trainer, pl_module):
            sync(pl_module.device)
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, trainer, pl_module):
            sync(pl_module.device)
            self.times.append((time.perf_counter() - self.t, time.process_time() - self.c))
            if raw is not None:
                self.raw_times.append(raw.epoch())

    torch.manual_seed(cfg.seed)
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), dm.input_shape, dm.num_classes)
    module = Classifier(
        model, dm.num_classes, OmegaConf.to_container(cfg.train.optimizer, resolve=True),
        OmegaConf.to_container(cfg.train.scheduler, resolve=True), epochs)
    timer = EpochTimes()
    with tempfile.TemporaryDirectory(prefix="bench-fit-") as out:
        loggers = job_loggers(cfg, Path(out), OmegaConf.to_container(cfg, resolve=True), "benchmark", None)
        try:
            fit(cfg, module, dm, Path(out), epochs, loggers, callbacks=[timer])
        finally:
            finish(loggers, {"status": "ok", "config_hash": "benchmark", "metrics": {}})
    return timer.times, timer.raw_times


def epoch_workloads(args) -> list[dict]:
    q = args.quick
    lenet = ["data=mnist", "model=lenet300_100", "data.val_fraction=0", "data.batch_size=128"]
    if q:
        lenet.append("data.max_train=12800")
    n_res = 256 if q else args.resnet_samples
    resnet = ["data=synthetic", "model=resnet20", "data.val_fraction=0", "data.batch_size=128",
              "data.synthetic.shape=[3,32,32]", f"data.synthetic.n_train={n_res}", "data.synthetic.n_test=256"]
    return [{"name": "LeNet-300-100, MNIST", "overrides": lenet, "reps": 2 if q else 5, "epochs": 2 if q else 3,
             "control": True},
            {"name": "ResNet-20, CIFAR-shaped synthetic", "overrides": resnet, "reps": 1 if q else 2,
             "epochs": 2, "control": False}]


def bench_epoch(args) -> dict:
    import torch

    from compresslab.job import build_datamodule

    device = torch.device(args.device)
    trainer = (["trainer=gpu"] if device.type == "cuda" else []) + [
        f"trainer.precision={'bf16-mixed' if args.bf16 else '32-true'}",
        f"trainer.channels_last={str(args.channels_last).lower()}"]
    out = []
    for w in epoch_workloads(args):
        cfg = compose([*w["overrides"], *trainer, *thread_override(args), "logger=default"])
        dm = build_datamodule(cfg)
        dm.setup()
        channels_last = args.channels_last and dm.x_train.dim() == 4
        pairs = {"compresslab": []}  # (compresslab wall, CPU, raw wall, raw CPU) per epoch
        for _ in range(w["reps"]):
            raw = RawLoop(cfg, dm, w["epochs"], device, args.bf16, channels_last)
            times, raw_times = compresslab_fit(cfg, dm, w["epochs"], raw=raw)
            pairs["compresslab"] += [(*a, *r) for a, r in zip(times, raw_times)]
            if w["control"]:  # the pairing's own error: a raw loop paired with a second raw loop
                first, second = (RawLoop(cfg, dm, w["epochs"], device, args.bf16, channels_last) for _ in range(2))
                pairs.setdefault("raw_control", []).extend(
                    (*first.epoch(), *second.epoch()) for _ in range(w["epochs"]))
        row = {"workload": w["name"], "samples": len(dm.y_train), "batch_size": dm.batch_size,
               "epochs_per_run": w["epochs"], "reps": w["reps"], "epoch_pairs": pairs}
        if "raw_control" in pairs:
            control = [p[0] / p[2] for p in pairs["raw_control"]]
            row["raw_control_wall_ratio"] = median(control)
            row["raw_control_wall_range"] = [min(control), max(control)]
        for clock, i in (("wall", 0), ("cpu", 1)):
            row[f"raw_{clock}_s"] = median([p[2 + i] for p in pairs["compresslab"]])
            row[f"compresslab_{clock}_s"] = median([p[i] for p in pairs["compresslab"]])
            row[f"compresslab_{clock}_ratio"] = median([p[i] / p[2 + i] for p in pairs["compresslab"]])
        out.append(row)
        print(f"[epoch] {w['name']}: wall raw {row['raw_wall_s']:.3f} s, compresslab {row['compresslab_wall_s']:.3f} s "
              f"({row['compresslab_wall_ratio']:.3f}x); CPU time ratio {row['compresslab_cpu_ratio']:.3f}"
              + (f"; raw paired with raw {row['raw_control_wall_ratio']:.3f}x" if w["control"] else ""), flush=True)
    return {"workloads": out}


# ---------------------------------------------------------------------------------------------
# startup and multirun: subprocesses through the probe

def thread_override(args) -> list[str]:
    return [f"threads={args.threads}"] if args.threads else []


def small_job(args) -> list[str]:
    return [*thread_override(args), "data=mnist", "data.max_train=2048", "data.max_test=1000", "train.epochs=1",
            "trainer.enable_progress_bar=false", *(["trainer=gpu"] if args.device == "cuda" else [])]


def stage(events: list[dict], name: str, clock: str = "t") -> list[float]:
    return [e[clock] for e in events if e["event"] == name]


def bench_startup(args) -> dict:
    reps = 2 if args.quick else 4
    rows = []
    imports = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory(prefix="bench-start-") as root:
            run = run_probe(small_job(args), Path(root))
        ev = run["events"]
        rows.append({"to_first_step_s": stage(ev, "first_step")[0], "to_first_step_cpu_s": stage(ev, "first_step", "cpu")[0],
                     "to_job_start_s": stage(ev, "job_start")[0], "interpreter_s": stage(ev, "process")[0],
                     "wall_s": run["wall_s"]})
        t0, c0 = time.time(), children_cpu()
        subprocess.run([sys.executable, "-c", "import torch, pytorch_lightning, wandb, hydra"], check=True,
                       capture_output=True)
        imports.append((time.time() - t0, children_cpu() - c0))
    res = {"reps": reps, "runs": rows, "imports_s": median([w for w, _ in imports]),
           "imports_cpu_s": median([c for _, c in imports]), **{k: median([r[k] for r in rows]) for k in rows[0]}}
    print(f"[startup] first step after {res['to_first_step_s']:.2f} s wall, {res['to_first_step_cpu_s']:.2f} s CPU "
          f"(imports alone {res['imports_s']:.2f} s wall)", flush=True)
    return res


def bench_multirun(args) -> dict:
    n = 3 if args.quick else 5
    with tempfile.TemporaryDirectory(prefix="bench-multirun-") as root:
        run = run_probe([*small_job(args), f"seed={','.join(map(str, range(n)))}"], Path(root), multirun=True)
    ev = run["events"]
    res = {"jobs": n, "wall_s": run["wall_s"], "process_to_first_job_s": stage(ev, "job_start")[0]}
    for clock, suffix in (("t", ""), ("cpu", "_cpu")):
        starts, ends = stage(ev, "job_start", clock), stage(ev, "job_end", clock)
        epochs = list(zip(stage(ev, "epoch_start", clock), stage(ev, "epoch_end", clock)))
        jobs = []
        firsts = stage(ev, "first_step", clock)
        for k in range(n):
            nxt = starts[k + 1] if k + 1 < n else ends[k]  # from this job's start to the next one's
            mine = [(s, e) for s, e in epochs if starts[k] <= s < nxt]
            train = sum(e - s for s, e in mine)
            jobs.append({"job_s": nxt - starts[k], "training_s": train, "extra_s": nxt - starts[k] - train,
                         # where the extra goes: before the first step (data, loggers, trainer set-up),
                         # after the last epoch (checkpoint, test, model file, W&B finish), between jobs
                         "to_first_step_s": firsts[k] - starts[k],
                         "after_training_s": ends[k] - mine[-1][1] if mine else None,
                         "between_jobs_s": nxt - ends[k]})
        res[f"per_job{suffix}"] = jobs
        res[f"extra_per_job{suffix}_s"] = median([j["extra_s"] for j in jobs[1:]])
        res[f"first_job_extra{suffix}_s"] = jobs[0]["extra_s"]
        for part in ("to_first_step_s", "after_training_s", "between_jobs_s"):
            res[f"{part[:-2]}{suffix}_s"] = median([j[part] for j in jobs[1:] if j[part] is not None])
    print(f"[multirun] extra per job beyond training: {res['extra_per_job_s']:.2f} s wall, "
          f"{res['extra_per_job_cpu_s']:.2f} s CPU (jobs 2..{n})", flush=True)
    return res


# ---------------------------------------------------------------------------------------------
# sweep: baseline reuse; parallel: the joblib launcher

def sweep_job(args) -> list[str]:
    base = [*thread_override(args), "data=mnist", "trainer.enable_progress_bar=false", "method=prune",
            *(["trainer=gpu"] if args.device == "cuda" else [])]
    if args.quick:
        return [*base, "data.max_train=4096", "train.epochs=2", "method.finetune_epochs=1"]
    return [*base, "train.epochs=3", "method.finetune_epochs=1"]


def bench_sweep(args) -> dict:
    if not (REPO / "conf" / "method" / "prune.yaml").is_file():
        return {"skipped": "conf/method/prune.yaml is missing"}
    base = sweep_job(args)
    reps = 1
    sweep_runs, indep_runs = [], []
    for _ in range(reps):
        with tempfile.TemporaryDirectory(prefix="bench-sweep-") as root:
            sweep_runs.append(run_entry([*base, f"method.rate={','.join(map(str, PRUNE_RATES))}"], Path(root),
                                        multirun=True))
        wall = cpu = 0.0
        for rate in PRUNE_RATES:  # each in its own project root: nothing to reuse
            with tempfile.TemporaryDirectory(prefix="bench-indep-") as root:
                w, c = run_entry([*base, f"method.rate={rate}"], Path(root))
            wall, cpu = wall + w, cpu + c
        indep_runs.append((wall, cpu))
    res = {"rates": list(PRUNE_RATES), "overrides": base}
    for i, clock in ((0, ""), (1, "_cpu")):
        res[f"sweep{clock}_s"] = median([r[i] for r in sweep_runs])
        res[f"independent{clock}_s"] = median([r[i] for r in indep_runs])
        res[f"ratio{clock}"] = res[f"sweep{clock}_s"] / res[f"independent{clock}_s"]
    print(f"[sweep] reuse {res['sweep_s']:.1f} s vs independent {res['independent_s']:.1f} s: "
          f"ratio {res['ratio']:.2f} wall, {res['ratio_cpu']:.2f} CPU", flush=True)
    return res


def parallel_workload(args) -> list[str]:
    """Each job of the parallel section: the default LeNet-300-100 MNIST baseline (a typical sweep job),
    `--parallel-epochs` long; --quick: a few seconds."""
    size = ["data.max_train=8192", "train.epochs=2"] if args.quick else [f"train.epochs={args.parallel_epochs}"]
    return [*thread_override(args), "data=mnist", "trainer.enable_progress_bar=false", "logger=default", *size,
            *(["trainer=gpu"] if args.device == "cuda" else [])]


def bench_parallel(args) -> dict:
    if not (REPO / "conf" / "hydra" / "launcher" / "parallel.yaml").is_file():
        launcher = ["hydra/launcher=joblib"]
    else:
        launcher = ["hydra/launcher=parallel"]
    n_jobs = args.parallel_jobs
    jobs = max(2 * n_jobs, 4) if not args.quick else n_jobs
    base = [*parallel_workload(args), f"seed={','.join(map(str, range(jobs)))}"]
    seq, par = [], []
    for _ in range(1 if args.quick else 2):  # interleaved
        with tempfile.TemporaryDirectory(prefix="bench-seq-") as root:
            seq.append(run_entry(base, Path(root), multirun=True))
        with tempfile.TemporaryDirectory(prefix="bench-par-") as root:
            par.append(run_entry([*base, *launcher, f"hydra.launcher.n_jobs={n_jobs}"], Path(root), multirun=True))
    seq, par = [w for w, _ in seq], [w for w, _ in par]
    res = {"jobs": jobs, "n_jobs": n_jobs, "launcher": launcher[0], "workload": parallel_workload(args),
           "sequential_s": median(seq), "parallel_s": median(par), "throughput_ratio": median(seq) / median(par),
           "runs": {"seq": seq, "par": par}}
    if args.device == "cpu":
        res["raw_ceiling"] = raw_parallel_ceiling(args, n_jobs)
    print(f"[parallel] {jobs} jobs: sequential {res['sequential_s']:.1f} s, {n_jobs} at once "
          f"{res['parallel_s']:.1f} s: {res['throughput_ratio']:.2f}x"
          + (f"; the same training in raw loops: {res['raw_ceiling']['throughput_ratio']:.2f}x"
             if "raw_ceiling" in res else ""), flush=True)
    return res


def raw_parallel_ceiling(args, n_jobs: int) -> dict:
    """What the hardware allows: the parallel section's training as hand-written loops in separate
    processes, n_jobs at once with cores // n_jobs threads each vs one after another with all cores.
    Each process sets up first, then waits for a common start time, so only training is timed."""
    cores = os.cpu_count() or 1
    overrides = [o for o in parallel_workload(args) if not o.startswith("threads=")]

    def launch(threads: int, start_at: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--raw-loop", str(threads),
                                 str(start_at), "--", *overrides], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})

    def spans(procs) -> list[tuple[float, float]]:
        out = []
        for proc in procs:
            stdout, _ = proc.communicate(timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(f"raw loop process failed ({proc.returncode})")
            out.append(tuple(json.loads(stdout.strip().splitlines()[-1])))
        return out

    setup_s = 20.0  # generous: a process imports torch and loads MNIST before the common start
    seq_s = 0.0
    for _ in range(n_jobs):
        (start, end), = spans([launch(cores, time.time() + setup_s)])
        seq_s += end - start
    together = spans([launch(max(1, cores // n_jobs), time.time() + setup_s) for _ in range(n_jobs)])
    par_s = max(e for _, e in together) - min(s for s, _ in together)
    return {"sequential_s": seq_s, "parallel_s": par_s, "throughput_ratio": seq_s / par_s,
            "threads_sequential": cores, "threads_parallel": max(1, cores // n_jobs)}


def raw_loop_main(threads: int, start_at: float, overrides: list[str]) -> None:
    import torch

    torch.set_num_threads(threads)
    from compresslab.job import build_datamodule

    cfg = compose(overrides)
    dm = build_datamodule(cfg)
    dm.setup()
    time.sleep(max(0.0, start_at - time.time()))
    loop = RawLoop(cfg, dm, cfg.train.epochs, torch.device("cpu"))
    start = time.time()
    for _ in range(cfg.train.epochs):
        loop.epoch()
    print(json.dumps([start, time.time()]))


# ---------------------------------------------------------------------------------------------
# inference: what compression buys in time

def to_sparse_csr(model):
    """A copy of `model` whose Linear layers multiply with CSR-stored weights."""
    import copy

    import torch
    from torch import nn

    class CSRLinear(nn.Module):
        def __init__(self, linear: nn.Linear):
            super().__init__()
            self.weight = linear.weight.detach().to_sparse_csr()
            self.bias = None if linear.bias is None else linear.bias.detach()

        def forward(self, x):
            out = torch.sparse.mm(self.weight, x.t()).t()
            return out if self.bias is None else out + self.bias

    sparse = copy.deepcopy(model)
    for parent in list(sparse.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, CSRLinear(child))
    return sparse


def latency_ms(fn, x, min_time: float) -> float:
    import torch

    with torch.inference_mode():
        for _ in range(3):
            fn(x)
        n, t = 0, time.perf_counter()
        while True:
            fn(x)
            n += 1
            el = time.perf_counter() - t
            if el >= min_time and n >= 5:
                return 1e3 * el / n


def bench_inference(args) -> dict:
    import torch
    from torch import nn

    from compresslab.compression.transforms import prune_
    from compresslab.metrics import count_params
    from compresslab.models import build_model

    torch.manual_seed(0)
    rate = 0.9
    models = {"LeNet-300-100": ({"arch": "mlp", "hidden": [300, 100]}, (1, 28, 28)),
              "LeNet-5": ({"arch": "lenet5"}, (1, 28, 28))}
    min_time = 0.05 if args.quick else 0.2
    rounds = 3 if args.quick else 7
    rows = []
    for name, (mcfg, shape) in models.items():
        dense = build_model(mcfg, shape, 10).eval()
        pruned = build_model(mcfg, shape, 10).eval()
        pruned.load_state_dict(dense.state_dict())
        prune_(pruned, rate)
        total, nonzero = count_params(pruned)
        variants = {"dense fp32": dense, f"pruned {rate:.0%}, dense storage": pruned,
                    f"pruned {rate:.0%}, sparse CSR Linear": to_sparse_csr(pruned),
                    "int8 dynamic (Linear)": torch.ao.quantization.quantize_dynamic(dense, {nn.Linear}, torch.qint8),
                    f"pruned {rate:.0%} + int8 dynamic": torch.ao.quantization.quantize_dynamic(pruned, {nn.Linear},
                                                                                                torch.qint8)}
        for batch in (1, 256):
            x = torch.randn(batch, *shape)
            samples = {v: [] for v in variants}
            for _ in range(rounds):  # interleaved rounds
                for v, m in variants.items():
                    samples[v].append(latency_ms(m, x, min_time))
            base = median(samples["dense fp32"])
            for v in variants:
                ms = median(samples[v])
                rows.append({"model": name, "variant": v, "batch": batch, "latency_ms": ms, "speedup": base / ms,
                             "compression_ratio": total / nonzero if "pruned" in v else 1.0})
        print(f"[inference] {name} done", flush=True)
    return {"threads": torch.get_num_threads(), "rows": rows}


# ---------------------------------------------------------------------------------------------
# Report

def stacked_section(args) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_stacked import bench_stacked

    args.gpu_points = [64, 256]
    return bench_stacked(args)


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"## {res['date']} — {m['host']} ({m['cpus']} CPUs, {m.get('gpu') or m['cpu']}), device {m['device']}"
             f"{' (quick)' if res['quick'] else ''}", "",
             f"torch {m['torch']} ({m['torch_threads']} threads), Python {m['python']}. Load average (1/5/15 min) "
             f"at start {res['load_start']}, at end {res['load_end']}. Run time {res['run_time_s']:.0f} s. "
             f"Command: `{res['command']}`", ""]
    s = res["sections"]
    targets = {"epoch": "≤ 1.10×", "startup": "≤ 8 s", "multirun": "≤ 1 s", "sweep": "≤ 0.45×", "parallel": "≥ 1.6×"}

    def fail(name):
        if "error" in s.get(name, {}):
            lines.extend([f"**{name}**: failed: {s[name]['error']}", ""])
            return True
        if "skipped" in s.get(name, {}):
            lines.extend([f"**{name}**: skipped: {s[name]['skipped']}", ""])
            return True
        return name not in s

    if not fail("epoch"):
        lines += ["### Per-epoch training time vs a hand-written loop (paired epochs)", "",
                  "Target: compresslab ≤ 1.10× the raw loop. Each compresslab epoch is followed by an epoch of "
                  "the raw loop; ratio = median over these pairs of their ratio, times = medians. Wall = elapsed "
                  "time; CPU = this process's CPU time.", "",
                  "| workload | samples | raw loop s (wall / CPU) | compresslab s (wall / CPU) | ratio wall | ratio CPU |",
                  "|---|---|---|---|---|---|"]
        for w in s["epoch"]["workloads"]:
            lines.append(f"| {w['workload']} | {w['samples']} × bs {w['batch_size']}, {w['reps']}×{w['epochs_per_run']} "
                         f"epochs | {w['raw_wall_s']:.3f} / {w['raw_cpu_s']:.3f} | {w['compresslab_wall_s']:.3f} / "
                         f"{w['compresslab_cpu_s']:.3f} | **{w['compresslab_wall_ratio']:.3f}** | "
                         f"**{w['compresslab_cpu_ratio']:.3f}** |")
        for w in s["epoch"]["workloads"]:
            if "raw_control_wall_ratio" in w:
                lo, hi = w["raw_control_wall_range"]
                lines += ["", f"Pairing check ({w['workload']}): the raw loop paired the same way with a second raw "
                              f"loop gives {w['raw_control_wall_ratio']:.3f}× (pairs from {lo:.3f}× to {hi:.3f}×)."]
        lines += ["", "compresslab = `Classifier` + `make_trainer`/`fit` + `TensorDataModule` with the job's "
                  "checkpoints and CSV + offline W&B loggers: Lightning's automatic optimisation, one batch per "
                  "optimizer step, the loss logged through `self.log`; both loops use the job's optimizer "
                  "(fused Adam by default).", ""]
    rows = []
    if not fail("startup"):
        st = s["startup"]
        rows.append(f"| fresh job: process start → first training step | **{st['to_first_step_s']:.2f} s** wall, "
                    f"{st['to_first_step_cpu_s']:.2f} s CPU (importing torch+lightning+wandb+hydra alone: "
                    f"{st['imports_s']:.2f} s wall, {st['imports_cpu_s']:.2f} s CPU) | {targets['startup']} |")
    if not fail("multirun"):
        mr = s["multirun"]
        rows.append(f"| sequential multirun: time per job beyond its training epochs (median of jobs 2..{mr['jobs']}) "
                    f"| **{mr['extra_per_job_s']:.2f} s** wall, {mr['extra_per_job_cpu_s']:.2f} s CPU (first job: "
                    f"{mr['first_job_extra_s']:.2f} s wall; of the extra, before the first step "
                    f"{mr['to_first_step_s']:.2f} s, after training {mr['after_training_s']:.2f} s, between jobs "
                    f"{mr['between_jobs_s']:.2f} s wall) | {targets['multirun']} |")
    if not fail("sweep"):
        sw = s["sweep"]
        rows.append(f"| 5-rate prune sweep, baseline reused vs 5 independent jobs | {sw['sweep_s']:.1f} s vs "
                    f"{sw['independent_s']:.1f} s = **{sw['ratio']:.2f}×** wall ({sw['ratio_cpu']:.2f}× CPU) "
                    f"| {targets['sweep']} |")
    if not fail("parallel"):
        pa = s["parallel"]
        rows.append(f"| {pa['jobs']} jobs, {pa['n_jobs']} at once ({pa['launcher']}) vs one after another | "
                    f"{pa['parallel_s']:.1f} s vs {pa['sequential_s']:.1f} s = **{pa['throughput_ratio']:.2f}×** "
                    f"throughput | {targets['parallel']} |")
        if "raw_ceiling" in pa:
            rc = pa["raw_ceiling"]
            rows.append(f"| the same training as raw loops in {pa['n_jobs']} processes ({rc['threads_parallel']} "
                        f"thread each) vs one after another ({rc['threads_sequential']} threads): what the hardware "
                        f"allows | {rc['parallel_s']:.1f} s vs {rc['sequential_s']:.1f} s = {rc['throughput_ratio']:.2f}× | |")
    if rows:
        lines += ["### Cost per job", "", "| measure | measured | target |", "|---|---|---|", *rows, ""]
    if not fail("inference"):
        inf = s["inference"]
        lines += [f"### Inference latency on CPU ({inf['threads']} threads; median of interleaved rounds)", "",
                  "| model | variant | compression ratio | batch 1 ms | speedup | batch 256 ms | speedup |",
                  "|---|---|---|---|---|---|---|"]
        by = {}
        for r in inf["rows"]:
            by.setdefault((r["model"], r["variant"]), {})[r["batch"]] = r
        for (model, variant), b in by.items():
            lines.append(f"| {model} | {variant} | {b[1]['compression_ratio']:.1f}× | {b[1]['latency_ms']:.3f} | "
                         f"{b[1]['speedup']:.2f}× | {b[256]['latency_ms']:.3f} | {b[256]['speedup']:.2f}× |")
        lines.append("")
    if not fail("stacked"):
        from bench_stacked import markdown_rows

        lines += markdown_rows(s["stacked"])
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] == "--raw-loop":  # one process of the parallel ceiling
        rest = sys.argv[4:]
        return raw_loop_main(int(sys.argv[2]), float(sys.argv[3]), rest[1:] if rest[:1] == ["--"] else rest)
    if len(sys.argv) > 2 and sys.argv[1] == "--probe":
        rest = sys.argv[3:]
        return probe_main(sys.argv[2], rest[1:] if rest[:1] == ["--"] else rest)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, few repetitions (about a minute idle)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in both loops (trainer.precision=bf16-mixed)")
    p.add_argument("--channels-last", action="store_true", help="channels-last conv weights in both loops")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for every loop and job (default: torch's own); on a shared, loaded "
                        "host 1 keeps the figures from measuring thread contention")
    p.add_argument("--parallel-jobs", type=int, default=2, help="jobs at once in the parallel section")
    p.add_argument("--parallel-epochs", type=int, default=10, help="epochs of each job in the parallel section")
    p.add_argument("--resnet-samples", type=int, default=2048, help="ResNet-20 training samples per epoch")
    p.add_argument("--out", default=str(REPO / "outputs" / "benchmark"))
    p.add_argument("--no-append", action="store_true", help="do not append the table to BENCHMARKS.md")
    args = p.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import logging
    import warnings

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    started = time.time()
    res = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "quick": args.quick,
           "command": "python " + " ".join([os.path.relpath(__file__, REPO), *sys.argv[1:]]),
           "machine": machine(args.device), "load_start": load_average(), "sections": {}}
    funcs = {"epoch": bench_epoch, "startup": bench_startup, "multirun": bench_multirun, "sweep": bench_sweep,
             "parallel": bench_parallel, "inference": bench_inference, "stacked": stacked_section}
    for name in chosen:
        t = time.time()
        try:
            res["sections"][name] = funcs[name](args)
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the others' figures
            res["sections"][name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            print(f"[{name}] failed: {e}", file=sys.stderr, flush=True)
        res["sections"][name]["section_time_s"] = time.time() - t
        res["sections"][name]["load_after"] = load_average()
    res["load_end"] = load_average()
    res["run_time_s"] = time.time() - started
    out = Path(args.out) / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(res)
    (out / "benchmark.json").write_text(json.dumps(res, indent=2, default=str))
    (out / "benchmark.md").write_text(md)
    if not args.no_append:
        bench = REPO / "BENCHMARKS.md"
        if not bench.exists():
            bench.write_text("# Benchmarks\n\nAppended by `scripts/benchmark.py` (one section per run).\n\n")
        with open(bench, "a") as f:
            f.write(md + "\n")
    print(md)
    print(f"written: {out / 'benchmark.json'}, {out / 'benchmark.md'}"
          + ("" if args.no_append else f", appended to {REPO / 'BENCHMARKS.md'}"))


if __name__ == "__main__":
    main()
