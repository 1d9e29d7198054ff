"""One job: compose -> data -> method -> result.json (+ W&B run), whatever happens in between.

A job never raises on its own account: a bad config value, data file or checkpoint, a non-finite
loss, weight or metric, a full disk or a bug all end in a `status: failed` record with a one-line
error, so the other jobs of a sweep go on. A stop from outside (Ctrl-C, SIGTERM, a dead launcher:
`Interrupted`) ends in a `status: interrupted` record and is raised again, so the run or sweep stops.
"""

from __future__ import annotations

import logging
import platform
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from compresslab import checks, keys, results
from compresslab.data import TensorDataModule, build_datamodule
from compresslab.errors import CompresslabError, ConfigError, Interrupted, StorageError
from compresslab.files import is_storage_error, storage_error
from compresslab.loggers import finish, job_loggers
from compresslab.methods import RUNNERS
from compresslab.models import check_model_config
from compresslab.steps import execute
from compresslab.training import is_rank_zero

log = logging.getLogger(__name__)
# Lightning's start-up banners (GPU/TPU availability, tips) say nothing about the job.
logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*(LeafSpec|does not have many workers|is deprecated).*")


@dataclass
class Job:
    cfg: DictConfig
    out_dir: Path
    config: dict
    dm: TensorDataModule | None = None
    loggers: list = field(default_factory=list)


def apply_threads(cfg) -> None:
    """The torch threads the config asks for (`threads`; unset: keep the process's)."""
    if cfg.get("threads") is not None:
        torch.set_num_threads(checks.number(cfg.threads, "threads", lo=1, integer=True))


def resolved_config(cfg: DictConfig) -> dict:
    """The job's config as plain data, as hashed into `config_hash` (Hydra's own settings left out)."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"the config does not resolve: {str(e).splitlines()[0]}") from e
    config.pop("hydra", None)
    return config


def run_job(cfg: DictConfig, out_dir: Path, overrides: list[str] | None = None,
            run_name: str | None = None, group: str | None = None) -> dict:
    """Run one job on its own; returns its record (also written to `out_dir/result.json`)."""
    return execute(job_steps(cfg, out_dir, overrides, run_name, group))


def job_steps(cfg: DictConfig, out_dir: Path, overrides: list[str] | None = None,
              run_name: str | None = None, group: str | None = None, stack: dict | None = None):
    """The job as steps (compresslab.steps), record keeping included: returns the record. `stack`
    ({id, size, slot}) says which stacked model served its steps, if one did."""
    out_dir = Path(out_dir)
    started = time.time()
    record = {"schema_version": results.SCHEMA_VERSION, "status": "failed", "error": None,
              "config_hash": "", "overrides": list(overrides or []), "seed": -1,
              "data": str(cfg.data.get("name", "?")), "model": str(cfg.model.get("name", "?")),
              "method": str(cfg.method.get("name", "?")), "metrics": {}, "paths": {"checkpoint": None},
              "versions": versions(),
              "job": {"output_dir": str(out_dir), "host": socket.gethostname(), "started": started}}
    if stack is not None:
        record["job"]["stack"] = dict(stack)
    job = Job(cfg, out_dir, {})
    try:
        job.config = resolved_config(cfg)
        record["config_hash"] = results.config_hash(job.config)
        record["config"] = job.config
        keys.check(job.config)
        record["seed"] = checks.seed(cfg.seed)
        kind = checks.choice(cfg.method.kind, "method.kind", RUNNERS)
        runner = RUNNERS[kind]
        apply_threads(cfg)
        check_model_config(cfg.model)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        job.dm = build_datamodule(cfg)
        runner.check(cfg)
        job.dm.setup()
        job.loggers = job_loggers(cfg, out_dir, job.config, run_name or out_dir.name, group)
        metrics, paths = yield from runner.steps(job)
        record.update(status="ok", metrics=metrics, paths={**record["paths"], **paths})
    except CompresslabError as e:
        record["error"] = str(e)
        log.error("job failed: %s", e)
    except (Interrupted, KeyboardInterrupt, SystemExit) as e:
        # Lightning turns a KeyboardInterrupt it catches into SystemExit(1).
        reason = e.reason if isinstance(e, Interrupted) else "stopped by SIGINT"
        record.update(status="interrupted", error=reason)
        log.warning("job interrupted (%s); re-running the same command resumes it", reason)
        raise Interrupted(reason) from None
    except Exception as e:  # noqa: BLE001 - a bug must not take the sweep down; its traceback is logged
        if is_storage_error(e):
            record["error"] = str(storage_error(e))
            log.error("job failed: %s", record["error"])
        else:
            record["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
            log.exception("job failed with an unexpected error")
    finally:
        record["job"]["wall_time_s"] = time.time() - started
        record["job"]["threads"] = torch.get_num_threads()
        if is_rank_zero():  # under DDP the other ranks only train
            try:
                wandb_dir = finish(job.loggers, record)
            except Exception as e:  # noqa: BLE001 - a logging failure must not lose the record
                log.warning("closing the W&B run failed: %s", e)
                wandb_dir = None
            record["paths"]["wandb"] = wandb_dir
            try:
                results.write(out_dir, record)
            except StorageError as e:  # the disk is full even for the record: the caller says so
                record["job"]["record_error"] = str(e)
                log.error("%s", e)
    return record


def versions() -> dict:
    import hydra
    import pytorch_lightning
    from importlib.metadata import PackageNotFoundError, version

    def pkg(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {"torch": torch.__version__, "lightning": pytorch_lightning.__version__,
            "hydra": hydra.__version__, "wandb": pkg("wandb"), "compresslab": pkg("compresslab"),
            "python": platform.python_version()}
