"""The benchmark script runs end to end and writes what it promises (its figures are not asserted:
speed is judged from its output, not by timed tests)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

from conftest import REPO


def test_quick_benchmark_writes_ratios_and_tables_without_touching_benchmarks_md(workdir):
    before = (REPO / "BENCHMARKS.md").read_bytes()
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), "--quick", "--only",
                           "epoch,inference", "--no-append", "--out", str(workdir / "bench")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = (workdir / "bench").iterdir()
    res = json.loads((run / "benchmark.json").read_text())
    assert set(res["sections"]) == {"epoch", "inference"}
    assert not any("error" in s for s in res["sections"].values())
    workloads = res["sections"]["epoch"]["workloads"]
    assert [w["workload"] for w in workloads] == ["LeNet-300-100, MNIST", "ResNet-20, CIFAR-shaped synthetic"]
    for w in workloads:
        assert w["raw_wall_s"] > 0 and w["compresslab_wall_s"] > 0
        pairs = w["epoch_pairs"]["compresslab"]  # each compresslab epoch with the raw epoch run right after it
        assert len(pairs) == w["reps"] * w["epochs_per_run"]
        assert w["compresslab_wall_ratio"] == statistics.median(a / r for a, _, r, _ in pairs)
    assert workloads[0]["raw_control_wall_ratio"] > 0  # the pairing's own error
    md = (run / "benchmark.md").read_text()
    assert "Per-epoch training time vs a hand-written loop" in md and "Inference latency" in md
    assert (REPO / "BENCHMARKS.md").read_bytes() == before


def test_stacked_benchmark_runs_a_sweep_with_both_launchers_and_reports_the_ratio(workdir):
    out = workdir / "stacked.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_stacked.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    for launcher in ("basic", "stacked"):
        assert row[launcher]["ok"] == row[launcher]["records"] == 2
    assert row["speedup"] == row["basic"]["wall_s"] / row["stacked"]["wall_s"]
    assert "| synthetic MLP, 2 jobs (smoke) | 2 |" in proc.stdout
