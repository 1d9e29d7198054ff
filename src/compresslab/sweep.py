"""What makes a sweep hold up: stable directories, skipping finished jobs, resuming interrupted
ones, capping each parallel job's threads, and counting what a sweep dir holds.

- The same sweep command lands in the same directory, `outputs/sweeps/<sweep config>-<hash of
  its overrides>/<the job's values of the keys the sweep varies>` (e.g. `method.rate=0.9,seed=1`),
  so a re-run finds what the last attempt left: a job whose result.json is ok for the same config
  hash is skipped, a failed one is redone from scratch, an interrupted one (status `interrupted`,
  or killed before it wrote any record) resumes from the `checkpoints/last.ckpt` it left.
  `force=true` redoes all.
- Two jobs of a sweep differ in a swept value, so their dirs differ whatever host or second they
  start on; names with unsafe characters or over 120 characters carry a hash of the full name.

Kept free of torch and Lightning imports: the entry point imports this before parsing the command line.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from compresslab import results
from compresslab.files import atomic_write
from compresslab.hashing import json_digest, text_digest

log = logging.getLogger(__name__)

ATTEMPT_FILE = "attempt.json"   # config hash of the attempt in progress: tells a resume from a stale dir
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".attempt.lock"     # flock held by the live attempt (the kernel drops it when it dies)
WANDB_DIR = "wandb"
# Command-line keys that change what a re-run does, not which jobs the sweep has.
NOT_IN_SWEEP_NAME = ("force",)
_SAFE = re.compile(r"[^A-Za-z0-9._,=+\-\[\]]")
_MAX_DIRNAME = 120


def sweep_dirname(choice: str | None, overrides: list[str]) -> str:
    """`<sweep config or 'sweep'>-<hash of the command-line overrides>`: the same command, in any
    order, gives the same name."""
    kept = sorted(o for o in overrides if _key(o) not in NOT_IN_SWEEP_NAME)
    return f"{choice or 'sweep'}-{json_digest(kept, 8)}"


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def fixed_keys(sweep_overrides: list[str]) -> list[str]:
    """Keys the sweep's command line sets to one value for every job (as opposed to sweeps)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(sweep_overrides))
    return sorted({_key(o.input_line) for o in parsed if not o.is_sweep_override()})


def job_dirname(job_overrides: list[str], fixed: list[str]) -> str:
    """A job's dir name: its overrides of keys the sweep varies, file-system safe, readable when
    short, hashed when not."""
    kept = sorted(o for o in job_overrides
                  if _key(o) not in set(fixed) and _key(o) not in NOT_IN_SWEEP_NAME)
    name = ",".join(kept)
    if not name:
        return "default"
    safe = _SAFE.sub("_", name)
    if safe == name and len(safe) <= _MAX_DIRNAME:
        return safe
    # Replaced characters or a cut could make two jobs' names equal: the hash keeps them apart.
    return f"{safe[:_MAX_DIRNAME - 9]}-{text_digest(name, 8)}"


def register_resolvers() -> None:
    # sweep_* resolvers are cached: Hydra copies the launching process's resolver cache into every
    # job's config (as it does for ${now:}), so a job, though composed from its own overrides only,
    # resolves them from the sweep's full command line, in whichever process it runs.
    if not OmegaConf.has_resolver("sweep_dirname"):
        OmegaConf.register_new_resolver(
            "sweep_dirname", lambda choice, overrides: sweep_dirname(choice, list(overrides)),
            use_cache=True)
    if not OmegaConf.has_resolver("sweep_fixed_keys"):
        OmegaConf.register_new_resolver("sweep_fixed_keys", lambda overrides: fixed_keys(overrides),
                                        use_cache=True)
    if not OmegaConf.has_resolver("compressible_layers"):
        # Resolved once, in the launching process, when the sweeper reads its params.
        OmegaConf.register_new_resolver("compressible_layers", _compressible_layers)
    if not OmegaConf.has_resolver("job_dirname"):
        OmegaConf.register_new_resolver(
            "job_dirname", lambda job, fixed: job_dirname(list(job), list(fixed)))


def _compressible_layers(*, _root_) -> str:
    from compresslab.sensitivity import sweep_value  # imports torch: only when a scan asks

    return sweep_value(_root_=_root_)


def resolve_names_before_launch(config) -> None:
    """Resolve the sweep's dir names in the launching process, before any job: fills the caches
    the jobs' configs inherit (hydra.sweep.subdir names each job by the keys the sweep varies,
    which only the sweep's command line tells; this holds when hydra.sweep.dir is given too)."""
    str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir)


# ---------------------------------------------------------------------------------------------
# Threads: a parallel launcher's jobs share the host's cores.

def thread_share(cores: int, launcher: dict) -> int | None:
    """Threads one job may use under `launcher` (its Hydra config), or None to keep torch's default.

    joblib runs `n_jobs` jobs at once on this host (-1: one per core); submitit jobs get the
    `cpus_per_task` they asked for. The basic launcher runs one job at a time: nothing to share.
    """
    if "n_jobs" in launcher:
        n_jobs = launcher["n_jobs"] or 1
        n_jobs = cores if n_jobs < 0 else n_jobs
        return max(1, cores // n_jobs)
    if launcher.get("cpus_per_task"):
        return int(launcher["cpus_per_task"])
    return None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cap_threads(threads: int) -> None:
    """Cap this process's torch, OpenMP and MKL threads: uncapped, every parallel job starts a thread
    per core, and the jobs' threads then wait on each other instead of computing (docs/conventions.md).
    The variables also cover libraries and children started later."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Re-runs: skip, redo or resume.

def previous_ok(out_dir: Path, config_hash: str) -> dict | None:
    """The ok record an earlier attempt left in `out_dir` for the same config, if any."""
    path = Path(out_dir) / results.FILENAME
    if not path.is_file():
        return None
    try:
        record = results.read(path)
    except results.SchemaError:
        return None
    return record if record["status"] == "ok" and record["config_hash"] == config_hash else None


def prepare_attempt(out_dir: Path, config_hash: str, force: bool = False) -> str:
    """Make `out_dir` ready for a new attempt of the job with `config_hash`; returns what it found:
    'fresh', 'resume' (an interrupted attempt of this config left checkpoints, from which
    training.fit goes on), or 'redo' (a failed, forced or differently configured attempt, whose
    checkpoints are removed so that nothing starts from its state)."""
    out_dir = Path(out_dir)
    # Every stage that trains keeps its own checkpoints/ (e.g. finetune_prune/checkpoints).
    ckpts = [p for p in out_dir.rglob(CHECKPOINT_DIR) if p.is_dir()] if out_dir.is_dir() else []
    attempt = out_dir / ATTEMPT_FILE
    state = "fresh"
    if (out_dir / results.FILENAME).is_file() or attempt.is_file():
        same = _attempt_hash(out_dir) == config_hash
        interrupted = _status(out_dir) in (None, "interrupted")
        state = "resume" if same and interrupted and not force and ckpts else "redo"
    if state == "redo":
        for path in ckpts:
            shutil.rmtree(path)
    if state != "fresh" and (out_dir / WANDB_DIR).is_dir():
        # The earlier attempt's W&B run is partial or superseded: `wandb sync` must not upload it
        # beside this attempt's run (the CSV log and the record keep what it logged).
        shutil.rmtree(out_dir / WANDB_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(attempt, json.dumps({"config_hash": config_hash}) + "\n")
    return state


@contextmanager
def attempt_lock(out_dir: Path):
    """Hold the job dir for one attempt: a second attempt (a re-run started while a sweep still runs)
    waits until the live one ends, then finds its record; a dead attempt's lock is already gone."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            log.warning("waiting for the live attempt (pid %s) that runs this job in %s",
                        lock.read().strip() or "?", out_dir)
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as e:  # a file system without locks (some network mounts): run unguarded
            log.warning("cannot lock %s (%s); nothing keeps a second attempt of this job out",
                        lock.name, e.strerror or e)
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            # Explicitly: a process forked meanwhile (a data loader worker) shares the lock.
            with suppress(OSError):
                fcntl.flock(lock, fcntl.LOCK_UN)


def _status(out_dir: Path) -> str | None:
    """The status of the record in `out_dir`; None without a readable one (a killed attempt)."""
    try:
        return json.loads((out_dir / results.FILENAME).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _attempt_hash(out_dir: Path) -> str | None:
    for name in (ATTEMPT_FILE, results.FILENAME):
        try:
            return json.loads((out_dir / name).read_text()).get("config_hash")
        except (OSError, ValueError, AttributeError):
            continue
    return None


# ---------------------------------------------------------------------------------------------
# What a sweep dir holds.

@dataclass
class Scan:
    records: list[dict] = field(default_factory=list)       # readable records, ok or failed; "_dir" added
    missing: list[Path] = field(default_factory=list)       # job dirs without result.json
    unreadable: list[str] = field(default_factory=list)     # "path: why"
    newer: list[str] = field(default_factory=list)          # records from a newer schema

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "ok"]

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r["status"] != "ok"]

    @property
    def interrupted(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "interrupted"]


def is_job_dir(path: Path) -> bool:
    """A directory Hydra started a job in (it writes .hydra/ before the job runs)."""
    return (path / ".hydra" / "overrides.yaml").is_file()


def scan(roots) -> Scan:
    """Every result.json under `roots`, and every started job dir that has none."""
    found = Scan()
    for root in map(Path, roots):
        for path in sorted(root.rglob(results.FILENAME)):
            try:
                found.records.append(results.read(path) | {"_dir": str(path.parent)})
            except results.SchemaError as e:
                (found.newer if _is_newer(path) else found.unreadable).append(str(e))
        for hydra_dir in sorted(root.rglob(".hydra")):
            job = hydra_dir.parent
            if is_job_dir(job) and not (job / results.FILENAME).exists():
                found.missing.append(job)
    return found


def _is_newer(path: Path) -> bool:
    try:
        version = json.loads(Path(path).read_text()).get("schema_version")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(version, int) and version > results.SCHEMA_VERSION


# ---------------------------------------------------------------------------------------------
# Searches: what an optimizing sweeper (Optuna) is given for each job.

def objective_value(record: dict, objective) -> float | None:
    """The number a search sweeper optimizes for this job, from the config's `objective`:
    `metric` of an ok record whose accuracy drop vs the baseline (-delta_test_acc) is at most
    `max_drop`; `penalty` for a failed job or one over the bound. None when there is no objective."""
    if not objective:
        return None
    metrics = record.get("metrics") or {}
    value = metrics.get(objective["metric"])
    max_drop = objective.get("max_drop")
    drop = -metrics["delta_test_acc"] if metrics.get("delta_test_acc") is not None else None
    feasible = (record.get("status") == "ok" and value is not None
                and (max_drop is None or (drop is not None and drop <= max_drop)))
    return float(value) if feasible else float(objective.get("penalty", float("nan")))
