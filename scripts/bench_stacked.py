#!/usr/bin/env python
"""The "stacked" section of scripts/benchmark.py: a whole sweep command, start to last record, with
the default (sequential) launcher and with `hydra/launcher=stacked`, run side by side.

    python scripts/bench_stacked.py                 # CPU: 16 MNIST-1D MLP jobs, 8 LeNet-300-100 jobs
    python scripts/bench_stacked.py --quick         # smaller sweeps
    python scripts/bench_stacked.py --smoke         # one tiny sweep: checks that the section runs
    python scripts/bench_stacked.py --device cuda --gpu-points 64,256

Each workload is a prune-rate x seed sweep from scratch (its baselines included) in a fresh project
root; both launchers run it once each, one right after the other, so a change in the host's load
hits both alike. model-epochs/s = the epochs all models of the sweep trained (baselines and
fine-tuning) / the command's wall time. --device cuda runs stacks of the given sizes only (the
sequential path would take hours at 256 points), stacked, with records written.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def workloads(quick: bool, device: str, gpu_points: list[int], smoke: bool = False) -> list[dict]:
    """Sweeps to time: name, overrides, and the model-epochs they train."""
    def prune_sweep(name, base, rates, seeds, epochs, finetune, extra=()):
        jobs, baselines = len(rates) * len(seeds), len(seeds)
        return {"name": name, "jobs": jobs, "model_epochs": baselines * epochs + jobs * finetune,
                "overrides": [*base, f"train.epochs={epochs}", "method=prune", f"method.finetune_epochs={finetune}",
                              "method.rate=" + ",".join(map(str, rates)), "seed=" + ",".join(map(str, seeds)),
                              "trainer.enable_progress_bar=false", *extra]}

    mlp = ["data=mnist1d", "model=mlp", "model.hidden=[100,100]", "data.batch_size=100", "threads=1"]
    lenet = ["data=mnist", "model=lenet300_100"]
    if device == "cuda":
        return [prune_sweep(f"LeNet-300-100 MNIST, {n} points (GPU)", [*lenet, "trainer=gpu"],
                            [round(0.5 + 0.45 * i / max(1, n // 4 - 1), 4) for i in range(n // 4)], range(4),
                            2, 2, [f"hydra.launcher.max_models={n}"]) for n in gpu_points]
    if smoke:  # seconds: checks that the section runs, measures nothing worth reading
        return [prune_sweep("synthetic MLP, 2 jobs (smoke)", ["data=synthetic", "model=mlp", "model.hidden=[16]",
                                                              "logger.wandb.enabled=false"], (0.5, 0.9), (0,), 1, 1)]
    if quick:
        return [prune_sweep("MNIST-1D MLP, 4 jobs (quick)", mlp, (0.5, 0.9), (0, 1), 2, 1),
                prune_sweep("LeNet-300-100 MNIST, 2 jobs (quick)", [*lenet, "data.max_train=4096"], (0.5, 0.9), (0,), 1, 1)]
    return [prune_sweep("MNIST-1D MLP, 16 jobs", mlp, (0.5, 0.7, 0.9, 0.95), (0, 1, 2, 3), 10, 4),
            prune_sweep("LeNet-300-100 MNIST, 8 jobs", lenet, (0.5, 0.7, 0.9, 0.95), (0, 1), 2, 2)]


def run_sweep(overrides: list[str], launcher: str, timeout: int = 5400) -> dict:
    """Wall time of one `python -m compresslab.train -m ...` in a fresh project root, and its records."""
    with tempfile.TemporaryDirectory(prefix="bench-stacked-") as root:
        env = {**os.environ, "COMPRESSLAB_ROOT": root, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
               "COMPRESSLAB_DATA_DIR": os.environ.get("COMPRESSLAB_DATA_DIR", str(REPO / "data"))}
        args = [sys.executable, "-m", "compresslab.train", "-m", *overrides, f"hydra/launcher={launcher}"]
        t0 = time.time()
        proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.time() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{launcher} sweep failed ({proc.returncode}): {proc.stderr[-1500:]}")
        recs = [json.loads(p.read_text()) for p in Path(root, "outputs", "sweeps").rglob("result.json")]
    accs = sorted(r["metrics"]["test_acc"] for r in recs if r["status"] == "ok")
    # The jobs' own training (fine-tuning) time; a stacked job's is its share of its stack's.
    train_s = sum(r["metrics"].get("train_time_s") or 0.0 for r in recs if r["status"] == "ok")
    return {"wall_s": wall, "records": len(recs), "ok": len(accs), "finetune_train_s": train_s,
            "test_acc_median": accs[len(accs) // 2] if accs else None}


def bench_stacked(args) -> dict:
    rows = []
    for w in workloads(args.quick, args.device, args.gpu_points, getattr(args, "smoke", False)):
        row = {"workload": w["name"], "jobs": w["jobs"], "model_epochs": w["model_epochs"]}
        launchers = ("stacked",) if args.device == "cuda" else ("basic", "stacked")
        for launcher in launchers:
            print(f"[stacked] {w['name']}: {launcher} launcher ...", file=sys.stderr, flush=True)
            r = run_sweep(w["overrides"], launcher)
            row[launcher] = {**r, "model_epochs_per_s": w["model_epochs"] / r["wall_s"]}
        if "basic" in row:
            row["speedup"] = row["basic"]["wall_s"] / row["stacked"]["wall_s"]
        rows.append(row)
    return {"rows": rows}


def markdown_rows(section: dict) -> list[str]:
    lines = ["### Stacked sweeps: a whole sweep command, sequential vs stacked", "",
             "Targets (CPU): the 16-job MNIST-1D sweep ≥ 5× faster stacked, the 8-job LeNet-300-100 sweep ≥ 1.5×. "
             "Each sweep runs from scratch (baselines included) in a fresh root, both launchers back to back.", "",
             "| sweep | jobs | model-epochs | sequential | stacked | speedup | model-epochs/s (seq → stacked) | "
             "fine-tuning time, sum over jobs (seq → stacked) | records ok | median test acc (seq / stacked) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    def fmt(value, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    for r in section["rows"]:
        seq, st = r.get("basic") or {}, r["stacked"]
        lines.append(f"| {r['workload']} | {r['jobs']} | {r['model_epochs']} | {fmt(seq.get('wall_s'), '.1f')} s | "
                     f"{st['wall_s']:.1f} s | **{fmt(r.get('speedup'), '.2f')}×** | "
                     f"{fmt(seq.get('model_epochs_per_s'), '.2f')} → {st['model_epochs_per_s']:.2f} | "
                     f"{fmt(seq.get('finetune_train_s'), '.1f')} s → {st['finetune_train_s']:.1f} s | "
                     f"{st['ok']}/{st['records']} | {fmt(seq.get('test_acc_median'), '.4f')} / "
                     f"{fmt(st['test_acc_median'], '.4f')} |")
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--smoke", action="store_true", help="one tiny sweep: checks the section runs")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--gpu-points", type=lambda s: [int(x) for x in s.split(",")], default=[64, 256])
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    section = bench_stacked(args)
    if args.json:
        Path(args.json).write_text(json.dumps(section, indent=2))
    print("\n".join(markdown_rows(section)))


if __name__ == "__main__":
    main()
