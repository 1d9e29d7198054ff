"""Compressed jobs through the real entry point: the record, the artifact, bad input failing before
any training without harming the sweep, and the baseline trained once for a sweep."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import records, run_train

import compresslab
from compresslab.checkpoint import load_model, save_model
from compresslab.models import build_model

MLP = {"arch": "mlp", "hidden": [300, 100], "dropout": 0.0, "input_dropout": 0.0}
COMPRESSION_KEYS = ("sparsity", "params_nonzero", "compression_ratio", "bits_per_weight", "macs_dense",
                    "macs_nonzero", "theoretical_speedup", "test_acc_before_finetune", "test_acc",
                    "baseline_test_acc", "delta_test_acc", "latency_ms_batch1", "latency_ms_batch256",
                    "artifact_bytes", "artifact_ratio", "layers", "stages")


def test_prune_quantize_job_writes_metrics_and_an_exact_artifact(workdir):
    proc = run_train("data=synthetic", "model=mlp", "method=prune_quantize", "method.finetune_epochs=1",
                     "method.rounds=1", "logger.wandb.enabled=false", check=True)
    (rec,) = records(workdir / "outputs")
    assert rec["status"] == "ok", proc.stderr
    m = rec["metrics"]
    assert all(k in m for k in COMPRESSION_KEYS)
    assert m["sparsity"] > 0.85 and m["compression_ratio"] > 7
    assert m["artifact_ratio"] > 20
    assert m["artifact_bytes"] == Path(rec["paths"]["artifact"]).stat().st_size
    assert [s["transform"] for s in m["stages"]] == ["prune", "quantize"]
    assert {lay["name"] for lay in m["layers"]} == {"net.1", "net.3", "net.5"}
    assert all(lay["bits"] == 6 for lay in m["layers"])
    artifact_model = compresslab.load_artifact(rec["paths"]["artifact"])
    dense_model, _ = load_model(Path(rec["paths"]["checkpoint"]))
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(artifact_model(x), dense_model.eval()(x))


def test_bad_values_fail_before_any_training(workdir):
    proc = run_train("data=synthetic", "model=mlp", "method=clip,prune,quantize", "++method.threshold=-1",
                     "++method.rate=1.0", "++method.bits=17", "logger.wandb.enabled=false", multirun=True)
    assert proc.returncode != 0
    errors = sorted(r["error"] for r in records(workdir / "outputs"))
    assert all(r["status"] == "failed" for r in records(workdir / "outputs"))
    assert len(errors) == 3
    assert any("method.threshold=-1" in e for e in errors)
    assert any("method.rate=1.0" in e for e in errors)
    assert any("method.bits=17" in e for e in errors)
    assert not (workdir / "outputs" / "cache" / "baseline").exists()  # no baseline was trained


def test_bad_baseline_checkpoints_fail_and_leave_the_sweep_going(workdir):
    good = save_model(workdir / "good.pt", build_model(MLP, (1, 28, 28), 10), MLP, (1, 28, 28), 10,
                      "synthetic")
    other = {"arch": "mlp", "hidden": [20], "dropout": 0.0, "input_dropout": 0.0}
    wrong_arch = save_model(workdir / "other.pt", build_model(other, (1, 28, 28), 10), other, (1, 28, 28),
                            10, "synthetic")
    (workdir / "corrupt.pt").write_bytes(b"not a torch file")
    ckpts = [workdir / "missing.pt", workdir / "corrupt.pt", wrong_arch, good]
    proc = run_train("data=synthetic", "model=mlp", "method=prune", "method.finetune_epochs=0",
                     "logger.wandb.enabled=false", "method.baseline_ckpt=" + ",".join(map(str, ckpts)), multirun=True)
    assert proc.returncode != 0
    by_ckpt = {r["config"]["method"]["baseline_ckpt"]: r for r in records(workdir / "outputs")}
    assert by_ckpt[str(good)]["status"] == "ok"
    assert "does not exist" in by_ckpt[str(workdir / "missing.pt")]["error"]
    assert "corrupt" in by_ckpt[str(workdir / "corrupt.pt")]["error"]
    assert "model" in by_ckpt[str(wrong_arch)]["error"] and by_ckpt[str(wrong_arch)]["status"] == "failed"
    assert not (workdir / "outputs" / "cache" / "baseline").exists()


def test_three_job_sweep_trains_its_baseline_once(workdir):
    proc = run_train("data=synthetic", "model=mlp", "method=prune", "method.rate=0.3,0.6,0.9",
                     "method.finetune_epochs=0", "logger.wandb.enabled=false", multirun=True, check=True)
    recs = records(workdir / "outputs")
    assert [r["status"] for r in recs] == ["ok"] * 3, proc.stderr
    assert len({r["paths"]["baseline"] for r in recs}) == 1
    assert len(list((workdir / "outputs" / "cache" / "baseline").iterdir())) == 1
    logs = [Path(r["_dir"], "train.log").read_text() for r in recs]
    assert sum("training baseline once" in log for log in logs) == 1
    assert sorted(round(r["metrics"]["stages"][0]["measured"]["sparsity[net.1.weight]"], 2)
                  for r in recs) == [0.3, 0.6, 0.9]
