"""The job's loggers: a CSV file beside the job, and one W&B run (offline unless configured)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger

log = logging.getLogger(__name__)


def job_loggers(cfg, out_dir: Path, config: dict, run_name: str, group: str | None) -> list:
    loggers = [CSVLogger(str(out_dir), name="csv", version="")] if cfg.logger.csv else []
    wb = cfg.logger.wandb
    if wb.enabled:
        import wandb
        from pytorch_lightning.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        # The job's own run, never the process's current one: a stack of jobs holds one run per job
        # open at once in one process.
        run = wandb.init(project=wb.project, entity=wb.get("entity"), name=run_name, group=group,
                         job_type=cfg.method.name, tags=list(cfg.get("tags", [])), dir=str(out_dir),
                         mode="offline" if wb.offline else "online", config=config,
                         settings=_wandb_settings(), reinit="create_new")
        run.define_metric("trainer/global_step")  # the x-axis WandbLogger's own runs get
        run.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        loggers.append(WandbLogger(experiment=run, save_dir=str(out_dir)))
    return loggers


def _wandb_settings():
    import wandb

    # Console capture would copy every progress-bar line into the run; the job log has them.
    return wandb.Settings(console="off", x_disable_stats=True)


def wandb_run(loggers):
    from pytorch_lightning.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            return lg.experiment
    return None


def finish(loggers, record: dict) -> str | None:
    """Put the final metrics in the W&B run's summary and close it; returns the run's directory."""
    run = wandb_run(loggers)
    if run is None:
        return None
    flat = {f"final/{k}": v for k, v in record.get("metrics", {}).items()
            if isinstance(v, (int, float, str, bool)) or v is None}
    run.summary.update({**flat, "status": record["status"], "error": record.get("error"),
                        "config_hash": record["config_hash"]})
    run_dir = str(Path(run.dir).parent)
    run.finish(exit_code=0 if record["status"] == "ok" else 1)
    return run_dir
