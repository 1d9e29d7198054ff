"""Train a model once, however many jobs ask for it: the baselines of compressed runs and the
teachers of distillation runs.

A model is keyed by the hash of the config that determines it (data, model, training recipe, seed).
The first job to ask trains it under an exclusive file lock and publishes it by atomic rename; jobs
asking meanwhile wait on the lock, then load the finished file. No job ever trains it twice or reads
half a file; a cached file that cannot be read is set aside (renamed, with a log line) and
trained again. (flock is exact on one host; on a cluster, point paths.cache_dir at a file system
with working POSIX locks, or train the baseline first.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from compresslab.errors import CheckpointError
from compresslab.files import atomic_write, set_aside
from compresslab.hashing import json_digest

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
T = TypeVar("T")


def key_of(spec: dict) -> str:
    """The cache dir name of a trained model's spec."""
    return json_digest(spec, 16)


def cached_model_path(cache_dir: Path, kind: str, spec: dict) -> Path:
    return Path(cache_dir) / kind / key_of(spec) / MODEL_FILE


def trained_once(cache_dir: Path, kind: str, spec: dict, train: Callable[[Path], Path],
                 load: Callable[[Path], T]) -> tuple[Path, T]:
    """(path, load(path)) of the model for `spec`, calling `train(directory)` (which must write
    MODEL_FILE there atomically) only when no job has trained it yet. A cached file that `load`
    refuses (CheckpointError: truncated, corrupt, non-finite) is set aside and trained again."""
    path = cached_model_path(cache_dir, kind, spec)
    if path.is_file():
        try:
            loaded = load(path)
            log.info("reusing %s %s", kind, path)
            return path, loaded
        except CheckpointError:
            pass  # healed below, under the lock, unless a concurrent job already did
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another job trains this same model
        try:
            if path.is_file():
                try:
                    loaded = load(path)
                    log.info("reusing %s %s (trained by a concurrent job)", kind, path)
                    return path, loaded
                except CheckpointError as e:
                    set_aside(path, f"{e}; the {kind} is trained again")
            atomic_write(path.parent / "spec.json", json.dumps(spec, indent=2, default=str))
            log.info("training %s once for every job that needs it: %s", kind, path.parent)
            train(path.parent)
            if not path.is_file():
                raise RuntimeError(f"training the {kind} wrote no {path}")
            return path, load(path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def train_missing_together(cache_dir: Path, kind: str, specs: list[dict],
                           train_all: Callable[[list[tuple[dict, Path]]], None]) -> None:
    """`trained_once` for several specs at once (a stack of jobs): every spec not cached yet is
    locked (in one order, so two processes never wait on each other), and `train_all([(spec,
    directory), ...])` trains them together, each writing MODEL_FILE into its directory. A spec it
    could not train stays missing: the job that needs it trains it (and fails) on its own."""
    missing = {key_of(s): s for s in specs if not cached_model_path(cache_dir, kind, s).is_file()}
    if not missing:
        return
    with contextlib.ExitStack() as held:
        claimed = []
        for key in sorted(missing):
            path = cached_model_path(cache_dir, kind, missing[key])
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = held.enter_context(open(path.parent / ".lock", "w"))
            fcntl.flock(lock, fcntl.LOCK_EX)
            held.callback(fcntl.flock, lock, fcntl.LOCK_UN)
            if path.is_file():
                continue  # trained by a concurrent job while we waited
            atomic_write(path.parent / "spec.json", json.dumps(missing[key], indent=2, default=str))
            claimed.append((missing[key], path.parent))
        if claimed:
            log.info("training %d %s models once for every job that needs them", len(claimed), kind)
            train_all(claimed)
