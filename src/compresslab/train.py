"""The Hydra entry point: `python -m compresslab.train [overrides]`, `-m` for a multirun sweep.

Each job writes `result.json` in its output dir; the process exits non-zero when any job failed,
after a one-line summary of the run or sweep.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
log = logging.getLogger("compresslab")

# One tag per launching process, so two runs started in the same second never share a directory.
_PROCESS_TAG = f"{os.getpid()}{secrets.token_hex(2)}"
if not OmegaConf.has_resolver("unique"):
    OmegaConf.register_new_resolver("unique", lambda: _PROCESS_TAG)

_exit_code = 0


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    from compresslab.job import run_job  # heavy imports after Hydra has parsed the command line

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    out_dir = Path(hc.runtime.output_dir)
    group = Path(hc.sweep.dir).name if multirun else None
    name = f"{cfg.method.name}-{hc.job.num}" if multirun else out_dir.name
    record = run_job(cfg, out_dir, list(hc.overrides.task), run_name=name, group=group)
    status = record["status"]
    where = f"{out_dir / 'result.json'}"
    if status == "ok":
        m = record["metrics"]
        log.info("ok: test_acc=%.4f -> %s", m.get("test_acc", float("nan")), where)
    else:
        print(f"compresslab: job failed: {record['error']} (record: {where})", file=sys.stderr)


class Summary(Callback):
    """Counts the records of the run or sweep and sets the process's exit status."""

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        self._summarize(Path(config.hydra.runtime.output_dir), sweep=False)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self._summarize(Path(config.hydra.sweep.dir), sweep=True)

    def _summarize(self, root: Path, sweep: bool) -> None:
        from compresslab import results

        global _exit_code
        records = sorted(root.rglob(results.FILENAME)) if root.exists() else []
        failed = []
        for path in records:
            try:
                if results.read(path)["status"] != "ok":
                    failed.append(path.parent)
            except results.SchemaError:
                failed.append(path.parent)
        if sweep:
            print(f"compresslab: sweep {root}: {len(records)} jobs, {len(records) - len(failed)} ok, "
                  f"{len(failed)} failed" + "".join(f"\n  failed: {d}" for d in failed))
        elif not failed and records:
            rec = results.read(records[0])
            print(f"compresslab: done. result: {records[0]}\n"
                  f"  checkpoint: {rec['paths'].get('checkpoint')}\n"
                  f"  W&B run (offline; `wandb sync` uploads it): {rec['paths'].get('wandb')}")
        if failed or not records:
            _exit_code = 1


def main() -> None:
    hydra_main()
    # Hydra imports the callback by name, so under `python -m` its state lives in the named module.
    from compresslab import train as named

    sys.exit(max(_exit_code, named._exit_code))


if __name__ == "__main__":
    main()
