"""Distillation jobs end to end: a record with every metric, one teacher for a student sweep,
and bad input failing before any training."""

from __future__ import annotations

from pathlib import Path

import pytest

from compresslab import results
from compresslab.checkpoint import load_model, save_model
from compresslab.models import build_model
from conftest import records, run_train

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# A small teacher keeps these runs to seconds; the student is the job's model.
BASE = ["method=distill", "data=synthetic", "model=mlp", "method.teacher.hidden=[64]"]
DISTILL = [*BASE, "model.hidden=[16]", "logger=none"]


def test_tiny_distillation_writes_a_valid_record_with_every_metric(workdir):
    run_train(*BASE, "model.hidden=[16]", "method.scratch=true", "method.temperature=20", check=True)
    (rec,) = records(workdir / "outputs")
    results.validate(rec)
    m = rec["metrics"]
    assert rec["status"] == "ok" and rec["method"] == "distill"
    for key in ("test_acc", "teacher_test_acc", "scratch_test_acc", "teacher_agreement"):
        assert 0 <= m[key] <= 1, key
    # 784 inputs -> 16 -> 10 and 784 -> 64 -> 10, biases included.
    assert m["student_params"] == 784 * 16 + 16 + 16 * 10 + 10 == m["params_total"]
    assert m["teacher_params"] == 784 * 64 + 64 + 64 * 10 + 10
    assert m["params_ratio"] == pytest.approx(m["teacher_params"] / m["student_params"])
    assert Path(rec["paths"]["teacher_checkpoint"]).is_file()
    assert (Path(rec["_dir"]) / "scratch" / "model.pt").is_file() and Path(rec["paths"]["checkpoint"]).is_file()
    assert rec["paths"]["wandb"] and Path(rec["paths"]["wandb"]).is_dir()


def test_student_sweep_trains_its_teacher_once(workdir):
    run_train(*BASE, "logger=none", "model.hidden=[8],[16],[8,8]", multirun=True, check=True)
    recs = records(workdir / "outputs")
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs)
    assert len({r["paths"]["teacher_checkpoint"] for r in recs}) == 1
    assert len({r["metrics"]["teacher_test_acc"] for r in recs}) == 1
    assert sorted(r["metrics"]["student_params"] for r in recs) == [6370, 6442, 12730]
    teachers = [p for p in (workdir / "outputs" / "cache" / "teacher").iterdir() if p.is_dir()]
    assert len(teachers) == 1
    logs = "".join(p.read_text() for p in (workdir / "outputs").rglob("*.log"))
    assert logs.count("training teacher once") == 1 and logs.count("reusing teacher") == 2


def teacher_ckpt(path: Path, input_shape=(1, 28, 28), num_classes=10) -> Path:
    model = build_model({"arch": "mlp", "hidden": [8]}, input_shape, num_classes)
    return save_model(path, model, {"name": "mlp", "arch": "mlp", "hidden": [8]}, input_shape, num_classes,
                      "synthetic")


def compose_job(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[*DISTILL, "data.max_train=512", "data.max_test=256",
                                           "train.epochs=1", "method.scratch=true", *overrides])


@pytest.mark.parametrize("override, message", [
    ("method.temperature=0", "method.temperature"),
    ("method.temperature=-2", "method.temperature"),
    ("method.soft_weight=1.5", "method.soft_weight"),
    ("method.soft_weight=-0.1", "method.soft_weight"),
    ("method.teacher.ckpt=missing/model.pt", "does not exist"),
    ("method.teacher.ckpt=wrong_shape.pt", "input shape"),
    ("method.teacher.ckpt=wrong_classes.pt", "classes"),
    ("+method.teacher.data.no_such_key=1", "no_such_key"),
    ("method.compress={pipeline:[prune]}", "method.rate"),
])
def test_bad_input_fails_before_training(workdir, override, message):
    from compresslab.job import run_job

    teacher_ckpt(workdir / "wrong_shape.pt", input_shape=(1, 8, 8))
    teacher_ckpt(workdir / "wrong_classes.pt", num_classes=3)
    (workdir / "job").mkdir()  # Hydra makes the job dir when it runs the entry point
    rec = run_job(compose_job(override), workdir / "job")
    assert rec["status"] == "failed" and message in rec["error"], rec["error"]
    assert results.read(workdir / "job")["status"] == "failed"
    # Nothing was trained: no teacher, no scratch student, no Lightning checkpoint.
    assert not (workdir / "outputs" / "cache").exists()
    assert not any((workdir / "job" / d).exists() for d in ("scratch", "checkpoints"))


def test_corrupt_teacher_checkpoint_fails_the_command(workdir):
    (workdir / "corrupt.pt").write_bytes(b"not a checkpoint")
    proc = run_train(*DISTILL, "method.teacher.ckpt=corrupt.pt")
    assert proc.returncode != 0 and "corrupt" in proc.stderr
    (rec,) = records(workdir / "outputs")
    assert rec["status"] == "failed" and "corrupt" in rec["error"]


def test_teacher_from_checkpoint_is_used_as_given(workdir):
    path = teacher_ckpt(workdir / "teacher.pt")
    run_train(*DISTILL, f"method.teacher.ckpt={path}", check=True)
    (rec,) = records(workdir / "outputs")
    assert rec["paths"]["teacher_checkpoint"] == str(path)
    assert rec["metrics"]["teacher_params"] == 784 * 8 + 8 + 8 * 10 + 10
    assert not (workdir / "outputs" / "cache" / "teacher").exists()


def test_student_pruned_while_it_distills_and_its_scratch_twin_alike(workdir):
    run_train(*DISTILL, "method.scratch=true", "train.epochs=2", "+method@method.compress=prune",
              "method.compress.rate=0.5", check=True)
    (rec,) = records(workdir / "outputs")
    m = rec["metrics"]
    assert rec["status"] == "ok" and m["params_nonzero"] < m["params_total"]
    assert Path(rec["paths"]["artifact"]).is_file() and m["artifact_ratio"] > 1
    for path in (rec["paths"]["checkpoint"], Path(rec["_dir"]) / "scratch" / "model.pt"):
        model, _ = load_model(Path(path))
        weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
        assert all(float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.01) for w in weights), path


def test_teacher_trains_under_its_own_data_keys_and_seed(workdir):
    from compresslab.methods.distill import teacher_run_cfg

    cfg = compose_job("seed=3")
    assert teacher_run_cfg(cfg) is cfg  # by default the teacher sees the job's data and seed
    cfg = compose_job("seed=3", "+method.teacher.data.shift_px=2", "method.teacher.seed=0")
    run_cfg = teacher_run_cfg(cfg)
    assert (run_cfg.data.shift_px, run_cfg.seed) == (2, 0)
    assert (cfg.data.shift_px, cfg.seed) == (0, 3)  # the student's own config is untouched
