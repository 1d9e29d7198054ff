"""The job's loggers: a CSV file beside the job, and one W&B run (offline unless configured)."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger

log = logging.getLogger(__name__)


def job_loggers(cfg, out_dir: Path, config: dict, run_name: str, group: str | None) -> list:
    loggers = [csv_logger(out_dir)] if cfg.logger.csv else []
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


def csv_logger(out_dir: Path) -> CSVLogger:
    """The job's csv/metrics.csv. Lightning's writer deletes the file it finds there; a job resuming
    from its checkpoints (a fresh attempt has none: sweep.prepare_attempt removes them) keeps the
    rows of its earlier attempts."""
    logger = CSVLogger(str(out_dir), name="csv", version="")
    path = metrics_csv(logger)
    if path.is_file() and any(Path(out_dir).rglob("last.ckpt")):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            step = row.pop("step")
            logger.experiment.log_metrics({k: v for k, v in row.items() if v != ""}, int(step))
        logger.save()
    return logger


def metrics_csv(logger: CSVLogger) -> Path:
    return Path(logger.log_dir) / "metrics.csv"


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
