"""Stacked sweeps: the jobs of a stack end where the same jobs run one by one end (initial weights,
final weights, test predictions), each with its own valid record; jobs without a stacked form run
alone; a diverging model fails only its own record; a re-run redoes only unfinished jobs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from compresslab import results, stacking
from compresslab.checkpoint import load_model
from compresslab.data.datamodule import TensorDataModule
from compresslab.modules.stacked import StackedOptimizer
from conftest import DATA_DIR, records, run_train

# 540 training inputs of 8x8 (600 - a tenth for validation; 400 with 3 folds), batches of 16:
# 34 optimizer steps an epoch, so two epochs make more than 50.
SMALL = ["data=synthetic", "data.synthetic.shape=[1,8,8]", "data.synthetic.n_train=600", "data.batch_size=16",
         "model=mlp", "model.hidden=[32,32]", "train.epochs=2", "logger.wandb.enabled=false",
         "trainer.enable_progress_bar=false"]


def sweep_both_ways(root: Path, *overrides: str) -> tuple[dict, dict, str]:
    """Run the same sweep one job after another and stacked, in separate project roots; returns
    both sets of records by job dir name, and the stacked run's output."""
    out = {}
    for launcher in ("basic", "stacked"):
        where = root / launcher
        where.mkdir()
        proc = run_train(*SMALL, *overrides, f"hydra/launcher={launcher}", multirun=True, tiny=False, cwd=where,
                         env={"COMPRESSLAB_ROOT": str(where)})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out[launcher] = ({Path(r["_dir"]).name: r for r in records(where / "outputs")}, proc.stdout + proc.stderr)
    return out["basic"][0], out["stacked"][0], out["stacked"][1]


def synthetic_test_inputs():
    dm = TensorDataModule("synthetic", DATA_DIR, synthetic={"shape": [1, 8, 8], "n_train": 600})
    dm.setup()
    return dm.x_test


def assert_same_models(alone: dict, stacked: dict, stack_size: int) -> None:
    assert alone.keys() == stacked.keys() and alone
    x = synthetic_test_inputs()
    for name, rec in stacked.items():
        results.validate(rec)
        assert rec["status"] == "ok", rec["error"]
        assert rec["job"]["stack"]["size"] == stack_size, rec["job"]
        a, _ = load_model(Path(alone[name]["paths"]["checkpoint"]))
        s, _ = load_model(Path(rec["paths"]["checkpoint"]))
        for (key, wa), (_, ws) in zip(a.state_dict().items(), s.state_dict().items()):
            relative = float((wa - ws).norm() / wa.norm().clamp_min(1e-12))
            assert relative <= 1e-4, f"{name}: {key} differs by {relative:.2e} (relative)"
            if "weight" in key:  # the same zeros: masks are per model, and exact
                assert torch.equal(wa == 0, ws == 0), f"{name}: {key} has other zeros"
        with torch.no_grad():
            agree = float((a.eval()(x).argmax(1) == s.eval()(x).argmax(1)).float().mean())
        assert agree >= 0.99, f"{name}: test predictions agree on {agree:.3f} only"


def test_untrained_stacked_models_start_from_the_per_job_weights_bit_for_bit(workdir):
    alone, stacked, _ = sweep_both_ways(workdir, "train.epochs=0", "seed=0,1,2")
    for name, rec in stacked.items():
        a, _ = load_model(Path(alone[name]["paths"]["checkpoint"]))
        s, _ = load_model(Path(rec["paths"]["checkpoint"]))
        for key, t in a.state_dict().items():
            assert torch.equal(t, s.state_dict()[key]), f"{name}: {key} starts elsewhere"
    # different seeds, different weights: the check above could not pass by accident
    w = [load_model(Path(r["paths"]["checkpoint"]))[0].state_dict()["net.1.weight"] for r in stacked.values()]
    assert not torch.equal(w[0], w[1])


def test_clip_prune_and_quantize_stacks_follow_the_per_job_trajectories(workdir):
    # three stacks (one per method) of three seeds; their baselines are trained as a stack first
    alone, stacked, out = sweep_both_ways(workdir, "method=clip,prune,quantize", "seed=0,1,2",
                                          "++method.finetune_epochs=2")
    assert "stacks (3+3+3 models)" in out, out[-2000:]
    assert "training 3 baseline models as one stack" in out
    assert_same_models(alone, stacked, stack_size=3)


def test_global_iterative_pruning_with_kmeans_qat_follows_the_per_job_trajectories(workdir):
    alone, stacked, _ = sweep_both_ways(workdir, "method=prune_quantize", "seed=0,1,2", "method.rounds=2",
                                        "method.finetune_epochs=2", "method.quantize_epochs=2",
                                        "method.bits=4", "method.rate=0.8")
    assert_same_models(alone, stacked, stack_size=3)
    for rec in stacked.values():  # the schedule ran per model: two prune rounds, then quantization
        stages = rec["metrics"]["stages"]
        assert [s["transform"] for s in stages] == ["prune", "quantize"]
        assert len([h for h in stages[0]["schedule"] if h["transform"] == "prune"]) >= 2


def test_learning_rates_weight_decays_and_folds_stack_with_per_model_hyperparameters(workdir):
    alone, stacked, _ = sweep_both_ways(workdir, "train.optimizer.lr=0.001,0.004", "data.cv.folds=3",
                                        "data.cv.fold=0,1,2", "train.optimizer.weight_decay=0.01")
    assert_same_models(alone, stacked, stack_size=6)


def test_a_diverging_model_fails_only_its_own_record(workdir):
    proc = run_train(*SMALL, "train.optimizer.name=sgd", "train.optimizer.lr=0.01,0.02,1e9", "hydra/launcher=stacked",
                     multirun=True, tiny=False)
    assert proc.returncode == 1, "a failed job must make the sweep's exit status non-zero"
    recs = {r["config"]["train"]["optimizer"]["lr"]: r for r in records(workdir / "outputs")}
    assert recs[1e9]["status"] == "failed" and "diverged" in recs[1e9]["error"]
    assert recs[0.01]["status"] == "ok" and recs[0.02]["status"] == "ok"
    assert recs[0.01]["job"]["stack"]["size"] == 3


def test_jobs_without_a_stacked_form_run_alone_and_reruns_redo_only_unfinished_jobs(workdir):
    command = [*[o for o in SMALL if not o.startswith("model.hidden")], "model.hidden=[32,32],[16]", "seed=0,1,2",
               "hydra/launcher=stacked"]
    first = run_train(*command, multirun=True, tiny=False)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    recs = records(workdir / "outputs")
    assert len(recs) == 6 and all(r["status"] == "ok" for r in recs)
    assert {r["job"]["stack"]["size"] for r in recs} == {3}, "two architectures: two stacks of three seeds"
    assert "2 stacks (3+3 models)" in first.stdout + first.stderr

    again = run_train(*command, multirun=True, tiny=False)
    assert "6 ok (6 skipped: done before)" in again.stdout, again.stdout[-2000:]
    victim = Path(recs[0]["_dir"]) / results.FILENAME
    victim.unlink()
    third = run_train(*command, multirun=True, tiny=False)
    assert "6 ok (5 skipped: done before)" in third.stdout, third.stdout[-2000:]
    assert results.read(victim)["status"] == "ok"

    # A model with no stacked form runs on its own, saying why; so does a job no other job matches.
    mixed = run_train(*[o for o in SMALL if not o.startswith("model")], "data.synthetic.shape=[40]",
                      "model=mnist1d_gru,mlp", "hydra/launcher=stacked", multirun=True, tiny=False)
    assert mixed.returncode == 0, mixed.stdout[-2000:] + mixed.stderr[-2000:]
    log = mixed.stdout + mixed.stderr
    assert "runs on its own: model.arch=mnist1d_gru: its GRU has no stacked form" in log, log[-2000:]
    assert re.search(r"runs on its own: no other job of the sweep to stack with", log), log[-2000:]


def test_max_models_below_one_is_refused_in_one_line(workdir):
    proc = run_train(*SMALL, "seed=0,1", "hydra/launcher=stacked", "hydra.launcher.max_models=0",
                     multirun=True, tiny=False)
    assert proc.returncode == 2
    assert "hydra.launcher.max_models=0 must be an integer >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_partition_groups_by_everything_but_the_stackable_keys():
    def config(seed, rate, hidden, kind="compress"):
        return {"seed": seed, "method": {"kind": kind, "rate": rate}, "model": {"arch": "mlp", "hidden": hidden},
                "paths": {"output_dir": f"/x/{seed}"}, "trainer": {"devices": 1}}

    configs = [config(0, 0.5, [8]), config(1, 0.9, [8]), config(2, 0.5, [8]), config(0, 0.5, [16]),
               config(0, 0.5, [8], kind="distill")]
    stacks, alone = stacking.partition(configs, max_models=2)
    assert stacks == [[0, 1]]  # seed and rate stack; max_models=2 leaves job 2 in a stack of its own
    assert "max_models=2" in alone[2]
    assert "model.hidden=[16]" in alone[3]
    assert "distill" in alone[4]


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_stacked_optimizer_takes_each_models_own_step_as_torch_does(name):
    torch.manual_seed(0)
    lrs, wds = [1e-3, 3e-2], [0.0, 0.1]
    weights = [torch.randn(4, 3) for _ in lrs]
    stacked = torch.nn.Parameter(torch.stack(weights))
    optim = StackedOptimizer([stacked], name, torch.tensor(lrs), torch.tensor(wds), momentum=0.9)
    alone = [torch.nn.Parameter(w.clone()) for w in weights]
    extra = {"momentum": 0.9} if name == "sgd" else {}
    reference = [{"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name](
        [p], lr=lr, weight_decay=wd, **extra) for p, lr, wd in zip(alone, lrs, wds)]
    for _ in range(20):
        grads = torch.randn(2, 4, 3)
        stacked.grad = grads.clone()
        optim.step()
        for p, opt, g in zip(alone, reference, grads):
            p.grad = g.clone()
            opt.step()
    for k, p in enumerate(alone):
        torch.testing.assert_close(stacked.detach()[k], p.detach(), rtol=1e-6, atol=1e-7)


def test_distilled_students_stack_with_their_own_temperature_and_soft_weight(workdir):
    # one teacher per seed, trained as a stack first; students with per-model T and soft_weight,
    # their scratch twins stacked alike
    alone, stacked, out = sweep_both_ways(workdir, "method=distill", "method.teacher.hidden=[64]",
                                          "method.temperature=2,8", "method.soft_weight=0.5,1.0", "seed=0",
                                          "method.scratch=true")
    assert "training 1 teacher models as one stack" in out  # the students share one teacher (one seed)
    assert_same_models(alone, stacked, stack_size=4)
    for name, rec in stacked.items():
        for key in ("teacher_test_acc", "scratch_test_acc", "teacher_agreement"):
            assert abs(rec["metrics"][key] - alone[name]["metrics"][key]) <= 0.01, (name, key)


def test_each_stack_can_be_handed_to_submitit_as_one_job(workdir):
    proc = run_train(*[o for o in SMALL if not o.startswith("model.hidden")], "model.hidden=[32],[16]",
                     "seed=0,1", "hydra/launcher=stacked_slurm_local", multirun=True, tiny=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "submitted 2 stacks as submitit jobs" in proc.stdout + proc.stderr
    recs = records(workdir / "outputs")
    assert len(recs) == 4 and all(r["status"] == "ok" and r["job"]["stack"]["size"] == 2 for r in recs)
