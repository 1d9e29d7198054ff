"""Sweeps: parallel and SLURM-style launchers, a failing job, re-runs that skip finished jobs,
resuming an interrupted job, stable job dirs, thread caps; cross-validation folds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from compresslab import sweep
from compresslab.data.datamodule import TensorDataModule, split_train_val, stratified_folds
from conftest import DATA_DIR, records, run_train

FAST = ["data=synthetic", "model=mlp", "logger.wandb.enabled=false"]


def by_lr(recs):
    return {r["config"]["train"]["optimizer"]["lr"] if "config" in r else None: r for r in recs}


def test_parallel_sweep_with_a_failing_job_then_rerun_redoes_only_it(workdir):
    command = [*FAST, "train.optimizer.lr=1e-3,-1", "hydra/launcher=parallel"]
    first = run_train(*command, multirun=True)
    assert first.returncode == 1, "a failed job must make the sweep's exit status non-zero"
    assert re.search(r"sweep \S+: 2 jobs, 1 ok, 1 failed", first.stdout), first.stdout
    recs = records(workdir / "outputs")
    assert len(recs) == 2
    failed = [r for r in recs if r["status"] == "failed"]
    ok = [r for r in recs if r["status"] == "ok"]
    assert len(failed) == 1 and len(ok) == 1
    assert "train.optimizer.lr=-1" in failed[0]["error"]
    # Each job's dir is named by the override it does not share with the other job.
    assert Path(ok[0]["_dir"]).name == "train.optimizer.lr=0.001"
    assert Path(failed[0]["_dir"]).name == "train.optimizer.lr=-1"
    # Two jobs at once on this host: each capped to its share of the cores.
    assert ok[0]["job"]["threads"] == max(1, sweep.available_cores() // 2)

    second = run_train(*command, multirun=True)
    assert second.returncode == 1
    assert "2 jobs, 1 ok (1 skipped: done before), 1 failed" in second.stdout, second.stdout
    again = {r["_dir"]: r for r in records(workdir / "outputs")}
    assert again[ok[0]["_dir"]]["job"]["started"] == ok[0]["job"]["started"], "the ok job was redone"
    assert again[failed[0]["_dir"]]["job"]["started"] > failed[0]["job"]["started"], "the failed job was not redone"

    forced = run_train(*command, "force=true", multirun=True)
    assert "skipped" not in forced.stdout
    redone = {r["_dir"]: r for r in records(workdir / "outputs")}
    assert len(redone) == 2, "force=true must land in the same sweep dir"
    assert redone[ok[0]["_dir"]]["job"]["started"] > ok[0]["job"]["started"]


def test_submitit_local_launcher_runs_the_sweep(workdir):
    # With a sweep dir of one's own, jobs are still named by what they vary.
    proc = run_train(*FAST, "seed=0,1", "hydra/launcher=slurm_local", "hydra.sweep.dir=outputs/mine",
                     multirun=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    recs = records(workdir / "outputs")
    assert sorted(r["seed"] for r in recs) == [0, 1]
    assert all(r["status"] == "ok" for r in recs)
    assert {Path(r["_dir"]).name for r in recs} == {"seed=0", "seed=1"}
    assert all(r["job"]["threads"] == 1 for r in recs), "cpus_per_task=1 caps each job to one thread"


def test_interrupted_job_resumes_from_its_last_checkpoint(workdir):
    command = [*FAST, "train.epochs=2", "seed=3"]
    assert run_train(*command, multirun=True).returncode == 0
    (rec,) = records(workdir / "outputs")
    assert rec["metrics"]["test_acc"] > 0.5
    job = Path(rec["_dir"])
    # Leave the job as a crash would: no result, and a last checkpoint (made recognisable: every
    # weight zeroed, so a model restored from it predicts one class).
    (job / "result.json").unlink()
    ckpt = torch.load(job / "checkpoints" / "last.ckpt", weights_only=False)
    ckpt["state_dict"] = {k: torch.zeros_like(v) for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, job / "checkpoints" / "last.ckpt")

    proc = run_train(*command, multirun=True)
    assert "resuming the interrupted attempt" in proc.stdout + proc.stderr
    (resumed,) = records(workdir / "outputs")
    assert resumed["_dir"] == rec["_dir"]
    # From scratch this job reaches the first run's accuracy (1.0 on these clusters); from the
    # zeroed checkpoint, with at most the remaining epoch to train, it cannot.
    assert resumed["metrics"]["test_acc"] < 0.9 < rec["metrics"]["test_acc"]


def test_optuna_search_sweep(workdir):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install 'compresslab[search]'")
    proc = run_train(*FAST, "sweep=search_prune_rate", "hydra.sweeper.n_trials=3",
                     "method.finetune_epochs=0", multirun=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    recs = records(workdir / "outputs")
    rates = [r["config"]["method"]["rate"] for r in recs]
    assert len(rates) == 3 and all(0.5 <= x <= 0.995 for x in rates)
    (best,) = list((workdir / "outputs" / "sweeps").glob("*/optimization_results.yaml"))
    assert "method.rate" in best.read_text()


SWEEPS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "sweep").glob("*.yaml"))


@pytest.mark.parametrize("name", SWEEPS)
def test_ready_sweep_composes_with_its_grid(name):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import compresslab.train

    if name.startswith("search_"):
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install 'compresslab[search]'")
    with initialize_config_dir(config_dir=str(compresslab.train.CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"sweep={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params, f"sweep={name} sweeps nothing"
    # each swept key exists in the composed job config, so a typo cannot pass as a one-job sweep
    for key in params:
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", f"{name}: {key}"


# --- units -----------------------------------------------------------------------------------

def test_thread_share():
    assert sweep.thread_share(16, {"n_jobs": 8}) == 2
    assert sweep.thread_share(2, {"n_jobs": 4}) == 1
    assert sweep.thread_share(16, {"n_jobs": -1}) == 1
    assert sweep.thread_share(16, {"cpus_per_task": 4, "timeout_min": 60}) == 4
    assert sweep.thread_share(16, {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}) is None


def test_objective_value():
    objective = {"metric": "compression_ratio", "max_drop": 0.01, "penalty": 0.0}
    ok = {"status": "ok", "metrics": {"compression_ratio": 8.0, "delta_test_acc": -0.005}}
    assert sweep.objective_value(ok, objective) == 8.0
    too_far = {"status": "ok", "metrics": {"compression_ratio": 20.0, "delta_test_acc": -0.02}}
    assert sweep.objective_value(too_far, objective) == 0.0
    assert sweep.objective_value({"status": "failed", "metrics": {}}, objective) == 0.0
    assert sweep.objective_value(ok, None) is None


def test_sweep_and_job_dir_names():
    a = sweep.sweep_dirname("prune_rates", ["seed=0,1", "train.epochs=1"])
    assert a == sweep.sweep_dirname("prune_rates", ["train.epochs=1", "seed=0,1", "force=true"])
    assert a != sweep.sweep_dirname("prune_rates", ["seed=0,1", "train.epochs=2"])
    assert a.startswith("prune_rates-")
    fixed = sweep.fixed_keys(["seed=0,1", "train.epochs=1", "+x=[1,2]"])
    assert fixed == ["train.epochs", "x"]
    assert sweep.job_dirname(["train.epochs=1", "seed=1", "method.rate=0.5"], ["train.epochs"]) == \
        "method.rate=0.5,seed=1"
    assert sweep.job_dirname(["train.epochs=1"], ["train.epochs"]) == "default"
    # Unsafe characters or long names get a hash, so names that would look alike stay apart.
    slash, underscore = sweep.job_dirname(["x=a/b"], []), sweep.job_dirname(["x=a_b"], [])
    assert "/" not in slash and slash != underscore
    long = sweep.job_dirname([f"model.hidden=[{','.join(['300'] * 60)}]"], [])
    assert len(long) <= 120


def test_prepare_attempt_resumes_only_an_interrupted_attempt_of_the_same_config(tmp_path):
    def ckpt_dir():
        (tmp_path / "checkpoints").mkdir(exist_ok=True)
        (tmp_path / "checkpoints" / "last.ckpt").write_text("x")

    assert sweep.prepare_attempt(tmp_path, "aaa") == "fresh"
    ckpt_dir()
    assert sweep.prepare_attempt(tmp_path, "aaa") == "resume"        # crashed: no result.json
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert sweep.prepare_attempt(tmp_path, "bbb") == "redo"          # another config: stale state
    assert not (tmp_path / "checkpoints").exists()
    ckpt_dir()
    (tmp_path / "result.json").write_text(json.dumps({"config_hash": "bbb", "status": "failed"}))
    assert sweep.prepare_attempt(tmp_path, "bbb") == "redo"          # failed: start again
    assert not (tmp_path / "checkpoints").exists()
    ckpt_dir()
    (tmp_path / "result.json").write_text(json.dumps({"config_hash": "bbb", "status": "interrupted"}))
    (tmp_path / "wandb" / "offline-run-1").mkdir(parents=True)
    assert sweep.prepare_attempt(tmp_path, "bbb") == "resume"        # Ctrl-C: its record says so
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert not (tmp_path / "wandb").exists()                         # no second, partial W&B run
    (tmp_path / "result.json").unlink()
    assert sweep.prepare_attempt(tmp_path, "bbb", force=True) == "redo"


# --- cross-validation folds -------------------------------------------------------------------

def imbalanced_labels(n=503, classes=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.choice(classes, size=n, p=np.arange(1, classes + 1) / np.arange(1, classes + 1).sum())


def test_folds_are_disjoint_stratified_and_cover_the_training_set():
    y = imbalanced_labels()
    folds = stratified_folds(y, 5, seed=0)
    joined = np.concatenate(folds)
    assert len(joined) == len(y) and len(np.unique(joined)) == len(y)   # disjoint and covering
    for fold in folds:
        for c in np.unique(y):
            # each class split as evenly as integers allow
            assert abs((y[fold] == c).sum() - (y == c).sum() / 5) < 1
    assert all((a == b).all() for a, b in zip(folds, stratified_folds(y, 5, seed=0)))  # fixed seed
    assert not all((a == b).all() for a, b in zip(folds, stratified_folds(y, 5, seed=1)))


def test_cv_split_validates_on_fold_i_and_trains_on_the_rest():
    y = torch.from_numpy(imbalanced_labels())
    vals = []
    for i in range(5):
        train, val = split_train_val(y, 0.1, seed=0, folds=5, fold=i)
        assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(y)
        vals.append(val.numpy())
    assert sorted(np.concatenate(vals).tolist()) == list(range(len(y)))


def test_datamodule_cv_fold_leaves_the_test_set_alone():
    def dm(fold):
        m = TensorDataModule("synthetic", DATA_DIR, cv={"folds": 4, "fold": fold},
                             synthetic={"n_train": 400, "n_test": 100, "shape": [8], "num_classes": 4})
        m.setup()
        return m

    a, b = dm(0), dm(1)
    assert len(a.y_val) == 100 and len(a.y_train) == 300
    assert torch.equal(a.y_test, b.y_test) and len(a.y_test) == 100
    assert not torch.equal(a.y_val, b.y_val)


@pytest.mark.parametrize("fold", [5, -1, None])
def test_a_fold_outside_the_folds_is_a_clear_error(fold):
    from compresslab.errors import ConfigError

    with pytest.raises(ConfigError, match="data.cv.fold"):
        split_train_val(torch.zeros(50, dtype=torch.long), 0.1, 0, folds=5, fold=fold)
