"""The Hydra entry point: `python -m compresslab.train [overrides]`, `-m` for a multirun sweep.

Each job writes `result.json` in its output dir; the process exits non-zero when any job failed,
after a one-line summary of the run or sweep. Ctrl-C (or SIGTERM) stops the run or the whole sweep
with one line: the running job's record says `interrupted`, and the same command resumes it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from compresslab import interrupts, sweep
from compresslab.errors import Interrupted
from compresslab.keys import CONF_DIR
from compresslab.sweep import scan

log = logging.getLogger("compresslab")

# One tag per launching process, so two runs started in the same second never share a directory.
_PROCESS_TAG = f"{os.getpid()}{secrets.token_hex(2)}"
if not OmegaConf.has_resolver("unique"):
    OmegaConf.register_new_resolver("unique", lambda: _PROCESS_TAG)
sweep.register_resolvers()

_exit_code = 0
_reported: list[str] = []  # the interrupted job's line, for main() to print


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    launcher = OmegaConf.to_container(hc.launcher)
    worker = "n_jobs" in launcher and multiprocessing.parent_process() is not None
    if worker:  # a joblib worker: stop with the launcher, even when it is killed with SIGKILL
        interrupts.install()
        interrupts.stop_with_parent()
    if cfg.get("threads") is None:  # before torch is imported, so OpenMP starts capped too
        share = sweep.thread_share(sweep.available_cores(), launcher)
        if share:
            sweep.cap_threads(share)
    from compresslab.job import resolved_config, run_job  # heavy imports after Hydra parsed the command line
    from compresslab.training import is_rank_zero

    multirun = hc.mode == RunMode.MULTIRUN
    out_dir = Path(hc.runtime.output_dir)
    if not is_rank_zero():  # a DDP process Lightning started: it trains; rank 0 readies the dir and reports
        _quiet_console()
        run_job(cfg, out_dir, list(hc.overrides.task))
        return None
    where = f"{out_dir / 'result.json'}"
    with sweep.attempt_lock(out_dir):
        previous = _done_before(cfg, out_dir, resolved_config)
        if previous:
            return sweep.objective_value(previous, cfg.get("objective"))
        group = Path(hc.sweep.dir).name if multirun else None
        name = f"{cfg.method.name}-{hc.job.num}" if multirun else out_dir.name
        try:
            record = run_job(cfg, out_dir, list(hc.overrides.task), run_name=name, group=group)
        except Interrupted as e:
            if worker and interrupts.orphaned():
                os._exit(143)  # nobody is left to report to; the record is written
            if not worker:
                _reported.append(f"compresslab: {e.reason}; the job's record says status: interrupted "
                                 f"({where}); run the same command again to resume it")
            raise
    status = record["status"]
    unwritten = record["job"].get("record_error")
    if status == "ok" and not unwritten:
        m = record["metrics"]
        log.info("ok: test_acc=%.4f -> %s", m.get("test_acc", float("nan")), where)
    elif unwritten:
        print(f"compresslab: job {status}: {record['error'] or unwritten} (no record written)", file=sys.stderr)
    else:
        print(f"compresslab: job failed: {record['error']} (record: {where})", file=sys.stderr)
    return sweep.objective_value(record, cfg.get("objective"))  # what a search sweeper optimizes


def _quiet_console() -> None:
    """Warnings and errors only on the console (the process's own log file keeps everything)."""
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:
            handler.setLevel(logging.WARNING)


def _done_before(cfg: DictConfig, out_dir: Path, resolved_config) -> dict | None:
    """The ok record an earlier run of this sweep left in `out_dir` for this very config; else
    None, after readying the dir (resume an interrupted attempt, clear a failed one)."""
    from compresslab import results
    from compresslab.errors import ConfigError

    try:
        config_hash = results.config_hash(resolved_config(cfg))
    except ConfigError:
        return None  # the job itself records why the config is unusable
    force = bool(cfg.get("force"))
    previous = None if force else sweep.previous_ok(out_dir, config_hash)
    if previous:
        log.info("skipped: already ok for this config (force=true redoes it) -> %s", out_dir)
        return previous
    if sweep.prepare_attempt(out_dir, config_hash, force) == "resume":
        log.info("resuming the interrupted attempt from its checkpoints in %s", out_dir)
    return None


class Summary(Callback):
    """Checks the output dir up front; afterwards counts the records of the run or sweep and sets
    the process's exit status."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _require_writable(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.started = time.time()  # records older than this are jobs an earlier run finished
        _require_writable(config.hydra.sweep.dir)
        sweep.resolve_names_before_launch(config)

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        self._summarize(Path(config.hydra.runtime.output_dir), sweep=False)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._summarize(Path(config.hydra.sweep.dir), sweep=True)

    def _summarize(self, root: Path, sweep: bool) -> None:
        global _exit_code
        from compresslab.training import is_rank_zero

        if not is_rank_zero():
            return
        found = scan([root]) if root.exists() else scan([])
        bad = len(found.failed) + len(found.missing) + len(found.unreadable) + len(found.newer)
        if sweep:
            kept = sum(r.get("job", {}).get("started", 0) < self.started for r in found.ok)
            total = len(found.records) + len(found.missing) + len(found.unreadable) + len(found.newer)
            stopped = len(found.interrupted)
            lines = [f"compresslab: sweep {root}: {total} jobs, {len(found.ok)} ok"
                     f"{f' ({kept} skipped: done before)' if kept else ''}, {bad - stopped} failed"
                     f"{f', {stopped} interrupted' if stopped else ''}"]
            lines += [f"  {r['status']}: {r['_dir']}: {r['error']}" for r in found.failed]
            lines += [f"  no result (interrupted?): {d}" for d in found.missing]
            lines += [f"  unreadable: {e}" for e in found.unreadable + found.newer]
            print("\n".join(lines))
        elif not bad and found.records:
            rec = found.records[0]
            print(f"compresslab: done. result: {rec['_dir']}/result.json\n"
                  f"  checkpoint: {rec['paths'].get('checkpoint')}\n"
                  f"  W&B run (offline; `wandb sync` uploads it): {rec['paths'].get('wandb')}")
        if bad or not found.records:
            _exit_code = 1


def _require_writable(directory: str) -> None:
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        probe = Path(directory) / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        print(f"compresslab: cannot write the output dir {directory} ({e.strerror or e}); set "
              "paths.output_dir (or COMPRESSLAB_ROOT) to a writable directory", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    interrupts.install()
    logging.raiseExceptions = False  # a full disk must not print a traceback per log line
    try:
        hydra_main()
    except Interrupted as e:
        print(_reported[0] if _reported else
              f"compresslab: {e.reason}; finished records are kept; run the same command again to "
              "resume the interrupted jobs", file=sys.stderr)
        sys.exit(130)
    # Hydra imports the callback by name, so under `python -m` its state lives in the named module.
    from compresslab import train as named

    sys.exit(max(_exit_code, named._exit_code))


if __name__ == "__main__":
    main()
