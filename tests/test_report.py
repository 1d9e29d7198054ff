"""The report: numbers equal a hand computation on fixture records; plots written; failed and
missing jobs listed; bad dirs and newer schemas refused with a clear error."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from compresslab import report, results


def record(method="prune", rate=0.5, seed=0, fold=None, status="ok", **metrics):
    config = {"seed": seed, "data": {"name": "mnist", "cv": {"folds": 5 if fold is not None else None,
                                                             "fold": fold}},
              "model": {"name": "lenet300_100"}, "method": {"name": method, "rate": rate},
              "paths": {"output_dir": "/somewhere"}, "threads": None}
    base = {"test_acc": 0.9, "test_loss": 0.3, "val_acc": 0.9, "params_total": 1000,
            "params_nonzero": 1000, "size_fp32_bytes": 4000, "train_time_s": 1.0}
    return {"schema_version": results.SCHEMA_VERSION, "status": status,
            "error": None if status == "ok" else "method.rate=1.5 is out of range",
            "config_hash": results.config_hash(config), "overrides": [f"seed={seed}"], "seed": seed,
            "data": "mnist", "model": "lenet300_100", "method": method,
            "metrics": {**base, **metrics} if status == "ok" else {}, "paths": {}, "versions": {},
            "config": config, "job": {"started": 0.0, "wall_time_s": 2.0}}


def write(root: Path, name: str, rec: dict) -> None:
    (root / name).mkdir(parents=True)
    results.write(root / name, rec)


def make_sweep(root: Path) -> Path:
    write(root, "baseline", record("baseline", rate=None, test_acc=0.98))
    for seed, acc in zip(range(3), (0.90, 0.92, 0.94)):
        write(root, f"rate=0.5,seed={seed}", record(
            rate=0.5, seed=seed, test_acc=acc, baseline_test_acc=0.98, delta_test_acc=acc - 0.98,
            compression_ratio=2.0, artifact_ratio=1.5 + seed, theoretical_speedup=1.9,
            artifact_bytes=3000 - 100 * seed, macs_nonzero=500))
    for seed, acc in zip(range(2), (0.80, 0.86)):
        write(root, f"rate=0.9,seed={seed}", record(
            rate=0.9, seed=seed, test_acc=acc, baseline_test_acc=0.98, delta_test_acc=acc - 0.98,
            compression_ratio=10.0, artifact_ratio=6.0, theoretical_speedup=9.5,
            artifact_bytes=700, macs_nonzero=100))
    write(root, "rate=1.5,seed=0", record(rate=1.5, status="failed"))
    (root / "rate=0.9,seed=2" / ".hydra").mkdir(parents=True)        # started, never finished
    (root / "rate=0.9,seed=2" / ".hydra" / "overrides.yaml").write_text("- seed=2\n")
    return root


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The fixture sweep and its report, made once (plotting is the slow part)."""
    root = make_sweep(tmp_path_factory.mktemp("report") / "sweep")
    return root, report.make_report([root], root.parent / "out")


@pytest.fixture
def sweep_dir(tmp_path):
    return make_sweep(tmp_path / "sweep")


def rows_of(table: str) -> dict[str, list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("|")][2:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {f"{r[0]} {r[1]}": r for r in rows}


def test_table_equals_a_hand_computation(made):
    sweep_dir, rep = made
    rows = rows_of(rep.table)
    assert set(rows) == {"baseline –", "prune method.rate=0.5", "prune method.rate=0.9",
                         "prune method.rate=1.5"}
    r5 = rows["prune method.rate=0.5"]
    # mean 92.00 %, sample std of (90, 92, 94) = 2.00; delta (-8, -6, -4) pp; artifact (1.5, 2.5, 3.5)
    assert r5[2:9] == ["3 / 3", "92.00 ± 2.00", "90.00 ± 0.00", "-6.00 ± 2.00", "2.0 ± 0.0", "2.5 ± 1.0",
                      "1.9 ± 0.0"]
    r9 = rows["prune method.rate=0.9"]
    # (80, 86): mean 83, std = |86 - 80| / sqrt(2) = 4.2426
    assert r9[2:4] + r9[5:6] == ["2 / 2", "83.00 ± 4.24", "-15.00 ± 4.24"]
    assert rows["prune method.rate=1.5"][2:4] == ["0 / 1", "–"]
    assert rows["baseline –"][3] == "98.00"
    assert [str(d) for d in rep.missing] == [str(sweep_dir / "rate=0.9,seed=2")]
    assert [r["error"] for r in rep.failed] == ["method.rate=1.5 is out of range"]


def test_folds_and_seeds_are_repeats_of_one_config(tmp_path):
    root = tmp_path / "cv"
    accs = {0: 0.91, 1: 0.93, 2: 0.95, 3: 0.92, 4: 0.94}
    for fold, acc in accs.items():
        write(root, f"fold={fold}", record(rate=0.8, fold=fold, test_acc=acc))
    (group,) = report.group_records(report.scan([root]).records)
    mean, std = group.stat(lambda m: m["test_acc"])
    assert mean == pytest.approx(0.93) and std == pytest.approx(0.0158113883)  # stdev of the five


def test_csv_has_every_job(made):
    _, rep = made
    with open(rep.files["jobs.csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7
    assert sorted(r["status"] for r in rows).count("failed") == 1
    r = next(r for r in rows if r["dir"].endswith("rate=0.5,seed=1"))
    assert float(r["test_acc"]) == 0.92 and r["config"] == "method.rate=0.5" and r["seed"] == "1"


def test_plots_are_written_and_not_blank(made):
    import matplotlib.image

    _, rep = made
    for stem in ("compression_ratio", "artifact_bytes", "macs"):
        path = rep.files[f"pareto_{stem}.png"]
        assert path.stat().st_size > 5000
        pixels = matplotlib.image.imread(path)
        assert (pixels[..., :3] < 0.5).mean() > 0.005, f"{path} looks blank"


def test_pareto_front():
    points = [(2, 0.9), (4, 0.85), (3, 0.8), (1, 0.95), (4, 0.85)]
    assert report.pareto_front(points, x_higher_better=True) == [True, True, False, True, True]
    assert report.pareto_front(points, x_higher_better=False) == [False, False, False, True, False]


def test_command_prints_table_and_lists_failed_and_missing(sweep_dir, tmp_path, capsys):
    assert report.main([str(sweep_dir), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "| prune | method.rate=0.5 | 3 / 3 | 92.00 ± 2.00 |" in out
    assert "8 jobs: 6 ok, 1 failed, 1 without a result, 0 unreadable" in out
    assert "failed: " in out and "rate=1.5,seed=0: method.rate=1.5 is out of range" in out
    assert f"no result (interrupted or still running): {sweep_dir / 'rate=0.9,seed=2'}" in out


def test_empty_or_missing_dir_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    assert "no readable result.json under" in capsys.readouterr().err
    assert report.main([str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_unreadable_record_is_listed_but_a_newer_schema_is_refused(sweep_dir, tmp_path, capsys):
    (sweep_dir / "broken").mkdir()
    (sweep_dir / "broken" / "result.json").write_text("{not json")
    assert report.main([str(sweep_dir), "--out", str(tmp_path / "a")]) == 0
    assert "unreadable: " in capsys.readouterr().out

    newer = record(rate=0.7) | {"schema_version": results.SCHEMA_VERSION + 1}
    (sweep_dir / "newer").mkdir()
    (sweep_dir / "newer" / "result.json").write_text(json.dumps(newer))
    assert report.main([str(sweep_dir), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "newer" in err and "upgrade compresslab" in err
