"""`hydra/launcher=stacked`: a multirun's compatible jobs train together as one batched model.

The launcher composes every job of the sweep (as Hydra's basic launcher does), hands the jobs that
are already ok, or that have no stacked form, or that no other job shares a stack with, to the
ordinary per-job path (one log line says which key kept a job out), and runs each stack of at most
`max_models` jobs in this process (compresslab.stack_runner). Every job still gets its own job dir,
.hydra/ files, record, model.pt, artifact, CSV log and W&B run.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("compresslab")


class StackedLauncher(Launcher):
    """`max_models`: the most jobs one stacked model trains. `submitit`: None to train the stacks
    in this process, or submitit settings ({cluster: slurm | local, timeout_min, cpus_per_task,
    gpus_per_node, mem_gb, slurm_partition, ...}) to hand each stack to its own submitit job."""

    def __init__(self, max_models: int = 64, submitit: dict | None = None) -> None:
        self.max_models = max_models
        self.submitit = dict(submitit) if submitit else None
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        if isinstance(self.max_models, bool) or not isinstance(self.max_models, int) or self.max_models < 1:
            print(f"compresslab: hydra.launcher.max_models={self.max_models!r} must be an integer >= 1 "
                  "(the most jobs one stacked model trains)", file=sys.stderr)
            sys.exit(2)
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from compresslab import results, stacking, sweep
        from compresslab.errors import ConfigError
        from compresslab.job import resolved_config

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = []  # (index, overrides, sweep config, resolved job config or None)
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            HydraConfig.instance().set_config(sweep_config)
            task_cfg = OmegaConf.masked_copy(sweep_config, [k for k in sweep_config if k != "hydra"])
            try:
                resolved = resolved_config(task_cfg)
            except ConfigError:
                resolved = None  # runs alone: the job itself records why its config is unusable
            out_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
            done = resolved is not None and not resolved.get("force") and \
                sweep.previous_ok(out_dir, results.config_hash(resolved))
            jobs.append((idx, list(overrides), sweep_config, None if done else resolved))

        stackable = [j for j in jobs if j[3] is not None]
        stacks, alone = stacking.partition([j[3] for j in stackable], self.max_models)
        alone_idx = {stackable[i][0]: why for i, why in alone.items()}
        in_stack = {stackable[i][0] for s in stacks for i in s}
        log.info("stacked launcher: %d jobs, %d stacks (%s models), %d on their own", len(jobs), len(stacks),
                 "+".join(str(len(s)) for s in stacks) or "0", len(jobs) - len(in_stack))

        returns: dict[int, JobReturn] = {}
        for idx, overrides, sweep_config, _ in jobs:  # skipped, failing and unstackable jobs: per job
            if idx in in_stack:
                continue
            if idx in alone_idx:
                log.info("job #%d runs on its own: %s", idx, alone_idx[idx])
            returns[idx] = self._run_one(sweep_config, self.task_function)
        planned = []
        for number, stack in enumerate(stacks):
            members = [stackable[i] for i in stack]
            label = f"{number + 1}of{len(stacks)}"
            log.info("stack %s: %d jobs (#%s)", label, len(members), ",".join(str(m[0]) for m in members))
            planned.append((members, label, self._register(members, returns)))
        for (members, _, _), records in zip(planned, self._train_stacks([(p, lb) for _, lb, p in planned])):
            self._report(members, records, returns)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return [returns[j[0]] for j in jobs]

    def _train_stacks(self, stacks: list) -> list[list]:
        """Each stack's records: trained here one stack after another, or as submitit jobs at once."""
        from compresslab import stack_runner

        if not self.submitit:
            return [stack_runner.run_stack(members, label) for members, label in stacks]
        import submitit

        settings = dict(self.submitit)
        folder = Path(str(self.config.hydra.sweep.dir)) / ".submitit" / "%j"
        executor = submitit.AutoExecutor(folder=folder, cluster=settings.pop("cluster", "slurm"))
        executor.update_parameters(**{k: v for k, v in settings.items() if v is not None})
        submitted = [executor.submit(stack_runner.run_stack, members, label) for members, label in stacks]
        log.info("submitted %d stacks as submitit jobs (%s)", len(submitted),
                 ", ".join(str(job.job_id) for job in submitted))
        return [job.result() for job in submitted]

    def _run_one(self, sweep_config: DictConfig, task_function) -> JobReturn:
        ret = run_job(hydra_context=self.hydra_context, task_function=task_function, config=sweep_config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def _register(self, members: list, returns: dict) -> list:
        """Hydra's per-job bookkeeping for each member (job dir, .hydra/ files, callbacks), without
        the training; returns the stack_runner members."""
        from compresslab import results, stack_runner, sweep
        from compresslab.job import resolved_config

        planned: list[stack_runner.Member] = []

        def register(cfg: DictConfig) -> None:
            hc = HydraConfig.get()
            out_dir = Path(hc.runtime.output_dir)
            config_hash = results.config_hash(resolved_config(cfg))
            if sweep.prepare_attempt(out_dir, config_hash, bool(cfg.get("force"))) == "resume":
                log.info("re-running the interrupted job in %s as part of a stack", out_dir)
            planned.append(stack_runner.Member(cfg, out_dir, list(hc.overrides.task),
                                               f"{cfg.method.name}-{hc.job.num}", Path(hc.sweep.dir).name))

        for idx, _, sweep_config, _ in members:
            returns[idx] = self._run_one(sweep_config, register)
        return planned

    def _report(self, members: list, records: list, returns: dict) -> None:
        from compresslab import results, sweep

        objective = self.config.get("objective")
        for (idx, *_), record in zip(members, records):
            returns[idx].return_value = sweep.objective_value(record, objective) if record else None
            if record and record["status"] == "ok":
                log.info("ok: test_acc=%.4f -> %s", record["metrics"].get("test_acc", float("nan")),
                         Path(record["job"]["output_dir"]) / results.FILENAME)
            elif record:
                print(f"compresslab: job failed: {record['error']} (record: "
                      f"{Path(record['job']['output_dir']) / results.FILENAME})", file=sys.stderr)
