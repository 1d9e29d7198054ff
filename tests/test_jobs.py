"""End-to-end jobs through `python -m compresslab.train`: records, W&B runs, multirun, bad input."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from compresslab import results
from compresslab.data.sources import CIFAR10_MD5
from conftest import records, run_train
from wandb_records import run_contents


def wandb_files(job_dir) -> list[Path]:
    return sorted(Path(job_dir).glob("wandb/offline-run-*/run-*.wandb"))


@pytest.mark.parametrize("data,models", [
    ("mnist", "lenet300_100,lenet5,logreg"),
    ("digits", "mlp,logreg"),
    ("mnist1d", "mnist1d_cnn,mnist1d_gru,mlp"),
    ("synthetic", "mlp,lenet5"),
])
def test_every_sensible_data_model_pairing_trains(workdir, data, models):
    proc = run_train(f"data={data}", f"model={models}", "logger=none", multirun=True)
    recs = records(workdir / "outputs")
    assert len(recs) == len(models.split(",")), proc.stderr[-2000:]
    for rec in recs:
        assert rec["status"] == "ok", rec["error"]
        results.validate(rec)
        assert rec["data"] == data and 0 <= rec["metrics"]["test_acc"] <= 1
    assert proc.returncode == 0


def test_fashion_mnist_trains(workdir):
    if not Path("/usr/share/datasets/fashion-mnist").is_dir() and not (
            Path(os.environ["COMPRESSLAB_DATA_DIR"]) / "FashionMNIST" / "raw").is_dir():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    run_train("data=fashion_mnist", "model=mlp", "logger=none", "data.max_train=5000", check=True)
    (rec,) = records(workdir / "outputs")
    assert rec["status"] == "ok" and rec["metrics"]["test_acc"] > 0.5


def test_resnet20_on_cifar_batches(workdir):
    root = workdir / "data" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in CIFAR10_MD5:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (40, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, 40))}, f)
    run_train("data=cifar10", "data.verify=false", f"data.data_dir={workdir / 'data'}",
              "model=resnet20", "model.depth=8", "logger=none", check=True)
    (rec,) = records(workdir / "outputs")
    assert rec["status"] == "ok" and rec["metrics"]["params_total"] > 0


def test_baseline_record_checkpoint_and_wandb_run(workdir):
    run_train("data=mnist", "model=lenet300_100", "seed=3", check=True)
    (rec,) = records(workdir / "outputs")
    job_dir = Path(rec["_dir"])
    results.validate({k: v for k, v in rec.items() if k != "_dir"})
    m = rec["metrics"]
    assert m["params_total"] == m["params_nonzero"] == 266_610
    assert m["size_fp32_bytes"] == 4 * 266_610 and m["train_time_s"] > 0 and 0 < m["val_acc"] <= 1
    assert rec["seed"] == 3 and rec["config"]["seed"] == 3 and len(rec["config_hash"]) == 16
    assert set(rec["versions"]) >= {"torch", "lightning", "hydra", "wandb", "compresslab"}
    assert Path(rec["paths"]["checkpoint"]).is_file()
    assert (job_dir / "checkpoints" / "last.ckpt").is_file() and (job_dir / "checkpoints" / "best.ckpt").is_file()
    assert (job_dir / "csv" / "metrics.csv").is_file()
    (run_file,) = wandb_files(job_dir)
    logged = run_contents(run_file)
    assert logged["config"]["model"]["hidden"] == [300, 100] and logged["config"]["seed"] == 3
    assert logged["summary"]["final/test_acc"] == pytest.approx(m["test_acc"])
    assert logged["summary"]["status"] == "ok"


def test_multirun_gives_each_job_its_record_and_wandb_run_in_one_group(workdir):
    proc = run_train("data=synthetic", "model=mlp", "seed=1,2", multirun=True, check=True)
    recs = records(workdir / "outputs")
    assert [r["seed"] for r in recs] == [1, 2] and all(r["status"] == "ok" for r in recs)
    assert recs[0]["config_hash"] != recs[1]["config_hash"]
    runs = [run_contents(f) for r in recs for f in wandb_files(r["_dir"])]
    assert len(runs) == 2 and runs[0]["run"]["id"] != runs[1]["run"]["id"]
    assert runs[0]["run"]["group"] == runs[1]["run"]["group"] != ""
    assert "2 jobs, 2 ok, 0 failed" in proc.stdout


def test_same_config_and_seed_give_the_same_metrics(workdir):
    run_train("data=synthetic", "model=mlp", "seed=5", "logger=none", check=True)
    run_train("data=synthetic", "model=mlp", "seed=5", "logger=none", check=True)
    a, b = records(workdir / "outputs")
    assert a["config_hash"] == b["config_hash"]
    assert a["metrics"]["test_acc"] == b["metrics"]["test_acc"]
    assert a["metrics"]["test_loss"] == b["metrics"]["test_loss"]


@pytest.mark.parametrize("override,message", [
    ("data.batch_size=abc", "data.batch_size='abc' must be an integer"),
    ("train.optimizer.lr=-1", "train.optimizer.lr=-1 is out of range"),
    ("data.val_fraction=1.5", "data.val_fraction=1.5 is out of range: it must be in [0, 1)"),
    ("model.hidden=[10,-3]", "model.hidden[1]=-3 is out of range: it must be in [1, inf]"),
])
def test_bad_values_fail_the_job_with_one_clear_message(workdir, override, message):
    proc = run_train("data=synthetic", "model=mlp", override)
    assert proc.returncode != 0
    (rec,) = records(workdir / "outputs")
    assert rec["status"] == "failed" and message in rec["error"]
    results.validate({k: v for k, v in rec.items() if k != "_dir"})
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_group_option_or_key_is_refused_before_any_job(workdir):
    proc = run_train("model=transformer")
    assert proc.returncode != 0 and "Could not find 'model/transformer'" in proc.stderr
    proc = run_train("train.optimiser.lr=0.1")
    assert proc.returncode != 0 and "optimiser" in proc.stderr
    assert records(workdir / "outputs") == []


def test_corrupt_data_fails_the_job_naming_the_file(workdir):
    raw = workdir / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\0" * 64)
    proc = run_train("data=mnist", f"data.data_dir={workdir / 'data'}", env={"COMPRESSLAB_NO_DOWNLOAD": "1"})
    assert proc.returncode != 0
    (rec,) = records(workdir / "outputs")
    assert rec["status"] == "failed" and "is corrupt" in rec["error"] and "MNIST/raw" in rec["error"]


def test_unwritable_output_dir_is_one_clear_error(workdir):
    blocker = workdir / "a_file"
    blocker.write_text("not a directory")
    for multirun in (False, True):
        proc = run_train("data=synthetic", f"paths.output_dir={blocker}/outputs", multirun=multirun)
        assert proc.returncode != 0 and "cannot write the output dir" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_failed_record_validates_and_newer_schema_is_refused(tmp_path):
    record = {"schema_version": 1, "status": "failed", "error": "boom", "config_hash": "x", "overrides": [],
              "seed": 0, "data": "mnist", "model": "mlp", "method": "baseline", "metrics": {},
              "paths": {"checkpoint": None}, "versions": {}}
    results.write(tmp_path, record)
    assert results.read(tmp_path)["error"] == "boom"
    (tmp_path / "result.json").write_text(json.dumps({**record, "schema_version": 99}))
    with pytest.raises(results.SchemaError, match="newer"):
        results.read(tmp_path)
    with pytest.raises(results.SchemaError, match="needs an error"):
        results.validate({**record, "error": None})


def test_last_checkpoint_holds_the_final_epoch(workdir):
    import torch

    run_train("data=synthetic", "model=mlp", "train.epochs=3", "logger=none", check=True)
    (rec,) = records(workdir / "outputs")
    last = torch.load(Path(rec["_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2


def test_a_given_sweep_dir_still_gives_each_job_its_own_dir(workdir):
    run_train("data=synthetic", "model=mlp", "logger=none", "seed=1,2", f"hydra.sweep.dir={workdir}/mine",
              multirun=True, check=True)
    recs = records(workdir / "mine")
    assert sorted(Path(r["_dir"]).name for r in recs) == ["seed=1", "seed=2"]


def test_a_diverging_loss_fails_the_job_with_a_clear_message(workdir):
    proc = run_train("data=synthetic", "model=mlp", "logger=none", "train.optimizer.name=sgd",
                     "train.optimizer.lr=1e12", "trainer.log_every_n_steps=1")
    assert proc.returncode != 0
    (rec,) = records(workdir / "outputs")
    assert rec["status"] == "failed" and "training diverged" in rec["error"]
    assert "Traceback" not in proc.stderr
