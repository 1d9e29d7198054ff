"""Faults from outside, made for real: Ctrl-C (SIGINT to the process group, as a terminal sends it),
kill -9 of a sweep and of its parallel launcher, a truncated checkpoint, a full file system."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from compresslab import files, results, sweep
from compresslab.errors import StorageError
from conftest import TINY, records, run_train

LONG = ("data=synthetic", "model=mlp", "model.hidden=[16]", "trainer.enable_progress_bar=false",
        "data.max_test=256")


def start_train(*overrides: str, multirun: bool = False) -> subprocess.Popen:
    """The entry point in its own session (process group), as a terminal runs it."""
    args = [sys.executable, "-m", "compresslab.train", *(["-m"] if multirun else []), *overrides]
    return subprocess.Popen(args, env={**os.environ, "HYDRA_FULL_ERROR": "0"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(predicate, timeout: float = 300.0, what: str = "", proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended ({proc.returncode}) before {what}: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def compresslab_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("compresslab:")]


def test_ctrl_c_records_interrupted_stops_the_sweep_and_a_rerun_resumes(workdir):
    command = (*LONG, "logger.csv=false", "train.epochs=60", "seed=0,1")
    proc = start_train(*command, multirun=True)
    sweep_dirs = lambda: list((workdir / "outputs" / "sweeps").glob("*/seed=0/checkpoints/last.ckpt"))  # noqa: E731
    wait_for(lambda: sweep_dirs(), what="the first epoch's checkpoint", proc=proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in out + err
    (line,) = compresslab_lines(err)
    assert "stopped by SIGINT" in line and "status: interrupted" in line and "run the same command again" in line
    job_dir = sweep_dirs()[0].parents[1]
    (rec,) = records(workdir / "outputs")
    assert rec["_dir"] == str(job_dir) and rec["status"] == "interrupted" and rec["error"] == "stopped by SIGINT"
    results.validate({k: v for k, v in rec.items() if k != "_dir"})
    assert not (job_dir.parent / "seed=1").exists(), "the sweep went on after Ctrl-C"

    rerun = run_train(*command, multirun=True, tiny=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming the interrupted attempt" in rerun.stdout
    recs = records(workdir / "outputs")
    assert [r["status"] for r in recs] == ["ok", "ok"]
    assert len(list(job_dir.glob("wandb/offline-run-*"))) == 1  # the partial W&B run is not synced twice


def test_sigkill_then_truncated_resume_checkpoint_is_set_aside(workdir):
    command = (*LONG, "logger=none", "train.epochs=60", "seed=0")
    proc = start_train(*command, multirun=True)
    last = lambda: list((workdir / "outputs" / "sweeps").glob("*/*/checkpoints/last.ckpt"))  # noqa: E731
    wait_for(lambda: last(), what="the first epoch's checkpoint", proc=proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    (ckpt,) = last()
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # as a kill during a non-atomic write left it
    rerun = run_train(*command, multirun=True, tiny=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"set aside the unreadable {ckpt}" in rerun.stdout
    assert list(ckpt.parent.glob("last.ckpt.unreadable-*"))
    (rec,) = records(workdir / "outputs")
    assert rec["status"] == "ok"


def test_a_truncated_cached_baseline_is_set_aside_and_trained_again(workdir):
    base = (*TINY, "data=synthetic", "model=mlp", "model.hidden=[16]", "logger=none")
    run_train(*base, tiny=False, check=True)
    (cached,) = (workdir / "outputs" / "cache" / "baseline").glob("*/model.pt")
    cached.write_bytes(cached.read_bytes()[:500])
    proc = run_train(*base, "method=prune", "method.rate=0.5", "method.finetune_epochs=0", tiny=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"set aside the unreadable {cached}" in proc.stdout
    assert list(cached.parent.glob("model.pt.unreadable-*")) and cached.is_file()
    assert [r["status"] for r in records(workdir / "outputs")] == ["ok", "ok"]


def test_a_truncated_user_checkpoint_says_so_without_unsafe_advice(workdir):
    path = workdir / "model.pt"
    path.write_bytes(b"PK\x03\x04" + os.urandom(300))
    proc = run_train("data=synthetic", "model=mlp", "logger=none", "method=prune", f"method.baseline_ckpt={path}")
    assert proc.returncode == 1
    (line,) = compresslab_lines(proc.stderr)
    assert f"{path} cannot be read: it is truncated, corrupt or not a checkpoint" in line
    assert "weights_only" not in line and "Errno" not in line and "delete it" not in line


def test_atomic_write_leaves_no_half_file_and_says_the_disk_is_full(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match=rf"no space left on the device to write {target}; free space"):
        files.atomic_write(target, "new" * 1000)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


@pytest.fixture
def small_fs(tmp_path):
    """A real 3 MB file system (tmpfs; needs root), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root); the injected-ENOSPC test covers the writer")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_ends_with_one_line_and_no_temp_files(workdir, small_fs, monkeypatch):
    monkeypatch.setenv("COMPRESSLAB_ROOT", str(small_fs))
    proc = run_train("data=synthetic", "model=mlp", "logger=none", "train.epochs=2", cwd=small_fs)
    assert proc.returncode == 1
    (line,) = compresslab_lines(proc.stderr)
    assert "no space left on the device to write" in line and "paths.output_dir" in line
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not [p for p in small_fs.rglob("*") if p.name.endswith(".tmp")]
    (rec,) = records(small_fs / "outputs")
    assert rec["status"] == "failed" and "no space left on the device" in rec["error"]


def test_a_live_attempt_holds_its_job_dir_and_a_dead_one_releases_it(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom compresslab import sweep\n"
         f"with sweep.attempt_lock({str(tmp_path)!r}):\n    print('held', flush=True)\n    time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    got = threading.Event()

    def second_attempt():
        with sweep.attempt_lock(tmp_path):
            got.set()

    threading.Thread(target=second_attempt, daemon=True).start()
    assert not got.wait(2.0), "a second attempt ran beside a live one"
    holder.kill()  # SIGKILL: no clean-up runs; the kernel drops the lock
    holder.wait()
    assert got.wait(10.0), "a dead attempt's lock was not released"
    with open(tmp_path / sweep.LOCK_FILE) as f:  # free again once both are gone
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_parallel_workers_stop_when_the_launcher_is_killed(workdir):
    proc = start_train(*LONG, "logger=none", "train.epochs=2000", "seed=0,1", "hydra/launcher=parallel",
                       multirun=True)
    ckpts = lambda: list((workdir / "outputs" / "sweeps").glob("*/seed=*/checkpoints/last.ckpt"))  # noqa: E731
    wait_for(lambda: len(ckpts()) == 2, what="both workers' first checkpoints", proc=proc)
    workers = children(proc.pid)
    assert workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    wait_for(lambda: not any(alive(w) for w in workers), timeout=30, what="the orphaned workers to stop")
    recs = records(workdir / "outputs")
    assert recs and all(r["status"] == "interrupted" for r in recs), [r.get("error") for r in recs]
    assert all(r["error"] == "stopped: its launching process died" for r in recs)
    for job_dir in {Path(c).parents[1] for c in ckpts()}:
        assert json.loads((job_dir / "result.json").read_text())["status"] == "interrupted"
