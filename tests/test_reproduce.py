"""Paper reproductions: the table from fixture records, the targets, the configs, the command line."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compresslab import reproduce, results
from compresslab.reproduce import (PAPERS, AtLeast, AtMost, Below, ClosesGap, Reproduction, Row, Within,
                                   build_table, collect, hidden_params_pct, targets_met)

REPO = Path(__file__).resolve().parents[1]


def record(overrides: list[str], seed: int, status: str = "ok", **metrics) -> dict:
    base = {"test_acc": 0.5, "test_loss": 1.0, "val_acc": None, "params_total": 10, "params_nonzero": 10,
            "size_fp32_bytes": 40, "train_time_s": 1.0}
    rec = {"schema_version": results.SCHEMA_VERSION, "status": status,
           "error": None if status == "ok" else "ConfigError: method.rate=2 is out of range",
           "config_hash": "x", "overrides": [*overrides, f"seed={seed}"], "seed": seed, "data": "mnist",
           "model": "m", "method": "baseline", "metrics": {**base, **metrics} if status == "ok" else {},
           "paths": {}, "versions": {}}
    return results.validate(rec)


TOY = Reproduction(
    name="toy", title="toy", source="nobody 2020", sweep=("experiment=toy_a,toy_b",),
    rows=(
        Row("a", "model a accuracy", {"experiment": "toy_a"}, reproduce.accuracy_pct, 90.0, "%", Within(4.0), 1),
        Row("b_err", "model b error", {"experiment": "toy_b"}, reproduce.error_pct, 5.0, "%",
            AtMost("a_err", 0.15)),
        Row("a_err", "model a error", {"experiment": "toy_a"}, reproduce.error_pct, None, "%", None),
        Row("ratio", "model b ratio", {"experiment": "toy_b"}, reproduce.metric("compression_ratio"), 12.0,
            "×", AtLeast(12.0), 1),
    ))


def test_table_mean_std_difference_and_targets():
    recs = [record(["experiment=toy_a"], 0, test_acc=0.88), record(["experiment=toy_a"], 1, test_acc=0.92),
            record(["experiment=toy_b"], 0, test_acc=0.89, compression_ratio=12.5),
            record(["experiment=toy_b"], 1, test_acc=0.90, compression_ratio=11.0),
            record(["experiment=toy_a"], 7, test_acc=0.10)]   # seed 7 is not asked for: left out
    rows = collect(TOY, recs, seeds=[0, 1])
    by = {r.row.key: r for r in rows}
    assert by["a"].values == pytest.approx([88.0, 92.0])
    assert by["a"].mean == pytest.approx(90.0)
    assert by["a"].std == pytest.approx(math.sqrt(8.0))      # sample std of 88, 92
    assert by["b_err"].mean == pytest.approx(10.5)
    assert by["ratio"].mean == pytest.approx(11.75)
    table = build_table(TOY, rows)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}
    assert "90.0 ± 2.8 % (n=2)" in lines["model a accuracy"] and "+0.0" in lines["model a accuracy"]
    assert lines["model a accuracy"].rstrip(" |").endswith("met")
    # b's error 10.5 > a's 10.0 + 0.15: missed; 11.75x < 12x: missed
    assert lines["model b error"].rstrip(" |").endswith("MISSED")
    assert "| -0.2 |" in lines["model b ratio"] and lines["model b ratio"].rstrip(" |").endswith("MISSED")
    assert targets_met(TOY, rows) == (1, 3)


def test_failed_and_missing_jobs_are_reported_not_hidden():
    recs = [record(["experiment=toy_a"], 0, test_acc=0.9), record(["experiment=toy_b"], 0, status="failed")]
    rows = collect(TOY, recs, seeds=[0])
    table = build_table(TOY, rows)
    assert "failed: ConfigError: method.rate=2 is out of range" in table
    assert "FAILED" in table
    # a record without the row's figure fails that row with a message instead of a made-up value
    rows = collect(TOY, [record(["experiment=toy_b"], 0)], seeds=[0])
    assert rows[3].values == [] and "lacks this figure" in rows[3].failed[0]


def test_rows_match_overrides_numerically():
    rec = record(["experiment=zhu2017_agp_gradual", "method.rate=0.95"], 0)
    assert reproduce.matches(rec, {"experiment": "zhu2017_agp_gradual", "method.rate": "0.950"})
    assert not reproduce.matches(rec, {"experiment": "zhu2017_agp_gradual", "method.rate": "0.9"})
    assert not reproduce.matches(rec, {"experiment": "zhu2017_agp_oneshot"})


def test_targets():
    row = Row("r", "r", {}, reproduce.error_pct, 74.0)
    means = {"scratch": 146.0, "teacher": 67.0, "oneshot": 3.0}
    gap = ClosesGap("scratch", "teacher", 0.5)
    assert gap.gap_closed(106.5, means) == pytest.approx(0.5)
    assert gap.met(106.0, row, means) and not gap.met(107.0, row, means)
    assert Below("oneshot").met(2.9, row, means) and not Below("oneshot").met(3.0, row, means)
    assert Within(4.0).met(70.0, row, means) and not Within(4.0).met(69.9, row, means)


def test_hinton_table_counts_errors_out_of_10k():
    recs = [record(["experiment=hinton2015_mnist"], s, test_acc=acc, teacher_test_acc=0.9900,
                   scratch_test_acc=0.9840) for s, acc in ((0, 0.9880), (1, 0.9870))]
    rows = collect(PAPERS["hinton2015_mnist"], recs, seeds=[0, 1])
    by = {r.row.key: r.mean for r in rows}
    assert by["teacher"] == pytest.approx(100) and by["scratch"] == pytest.approx(160)
    assert by["distilled"] == pytest.approx(125)
    table = build_table(PAPERS["hinton2015_mnist"], rows)
    assert "MISSED (closes 58%)" not in table and "met (closes 58%)" in table


def test_hidden_params_of_the_shrunk_model_by_hand():
    # 784-300-100-10 with half the hidden units removed: fc1 784x150, fc2 150x50, fc3 reads 50
    layers = [{"name": "net.1", "params": 784 * 300 + 300}, {"name": "net.3", "params": 300 * 100 + 100},
              {"name": "net.5", "params": 100 * 10 + 10}]
    rec = {"metrics": {"layers": layers, "shrunk": {"sizes": {"net.1": [784, 150], "net.3": [150, 50],
                                                             "net.5": [50, 10]}}}}
    small = 784 * 150 + 150 + 150 * 50 + 50
    assert hidden_params_pct(rec) == pytest.approx(100 * small / (784 * 300 + 300 + 300 * 100 + 100))


def _sweep_values(override: str) -> tuple[str, list[str]]:
    key, values = override.split("=", 1)
    return key, values.split(",")


def test_every_row_picks_jobs_its_sweep_runs_and_every_config_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for repro in PAPERS.values():
            grid = dict(_sweep_values(o) for o in repro.sweep)
            for row in repro.rows:
                for key, value in row.where.items():
                    assert key in grid and any(reproduce._same(v, value) for v in grid[key]), (repro.name, row.key)
            # A multirun first composes the primary config with the overrides that sweep nothing.
            fixed = [o for o in repro.sweep if "," not in o.split("=", 1)[1]]
            compose("train", overrides=fixed + list(repro.quick))
            for experiment in grid["experiment"]:
                overrides = [f"experiment={experiment}"] + [f"{k}={v[0]}" for k, v in grid.items()
                                                            if k != "experiment"]
                cfg = compose("train", overrides=overrides + list(repro.quick))
                assert cfg.data.name and cfg.model.arch, experiment


def test_mnist1d_recipe_is_the_papers():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=greydanus2020_mnist1d_cnn"])
    steps_per_epoch = 4000 * (1 - cfg.data.val_fraction) / cfg.data.batch_size
    assert cfg.data.name == "mnist1d" and steps_per_epoch * cfg.train.epochs == 6000
    assert cfg.train.optimizer.name == "adam" and cfg.train.optimizer.lr == pytest.approx(1e-2)
    assert cfg.train.scheduler.name == "none"


def _cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COMPRESSLAB_ROOT": str(cwd), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "compresslab.reproduce", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_list_and_unknown_name(workdir):
    proc = _cli("--list", cwd=workdir)
    assert proc.returncode == 0
    for name in PAPERS:
        assert name in proc.stdout
    proc = _cli("no_such_paper", cwd=workdir)
    assert proc.returncode == 2 and "unknown reproduction 'no_such_paper'" in proc.stderr


def test_quick_smoke_runs_the_real_entry_point_and_writes_the_table(workdir):
    proc = _cli("han2015_lenet300", "--quick", "logger=none", cwd=workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = workdir / "outputs" / "reproduce" / "han2015_lenet300-quick"
    table = (out / "table.md").read_text()
    assert "| pruned + retrained test error | 1.59 % |" in table
    rec = results.read(next((out / "jobs").rglob(results.FILENAME)))
    assert rec["status"] == "ok" and rec["metrics"]["compression_ratio"] > 10
    # the table shows the record's figure (to its printed precision)
    assert f"{100 * (1 - rec['metrics']['test_acc']):.2f} % (n=1)" in table
    # a second run of the same command skips the finished job and rebuilds the same rows
    again = _cli("han2015_lenet300", "--quick", "logger=none", cwd=workdir)
    assert again.returncode == 0 and "skipped" in again.stdout + again.stderr
