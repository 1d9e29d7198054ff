"""What a job promises about its training: an interrupted job resumed from its last checkpoint ends
bit for bit as the uninterrupted one (baseline, compressed and distilled), with logs and times that
cover the whole job; DDP ranks train the same weights and only rank 0 reports; the cache key of a
trained model changes exactly with the settings that change its weights."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from compresslab import reuse
from compresslab.methods.baseline import TRAINER_KEYS_NOT_IN_SPEC, model_spec
from compresslab.train import CONF_DIR
from conftest import TINY, records, run_train

# -- the cache key of trained models ---------------------------------------------------------------


def cache_key(*overrides: str) -> str:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return reuse.key_of(model_spec(cfg, cfg.model, cfg.train))


CHANGE_WEIGHTS = ["trainer.gradient_clip_val=1.0", "+trainer.gradient_clip_algorithm=value",
                  "trainer.precision=bf16-mixed", "trainer.accumulate_grad_batches=2", "deterministic=true",
                  "trainer.accelerator=gpu", "trainer.devices=2", "+trainer.strategy=ddp", "+trainer.num_nodes=2",
                  "trainer.channels_last=true", "+trainer.benchmark=true", "+trainer.limit_train_batches=0.5",
                  "seed=1", "train.optimizer.lr=0.5", "train.epochs=3", "data.batch_size=7", "data.shift_px=1",
                  "data.max_train=100", "data.val_fraction=0.2", "model.hidden=[5]", "model.dropout=0.5"]
SAME_WEIGHTS = ["trainer.log_every_n_steps=7", "trainer.enable_progress_bar=false",
                "trainer.progress_bar_refresh_rate=3", "trainer.num_sanity_val_steps=2",
                "+trainer.limit_val_batches=2", "+trainer.check_val_every_n_epoch=2", "data.eval_batch_size=5",
                "data.on_device=false", "data.max_test=10", "threads=1", "tags=[x]", "force=true",
                "logger=none", "method=prune", "task_name=other"]


@pytest.mark.parametrize("override", CHANGE_WEIGHTS)
def test_a_setting_that_changes_the_trained_weights_changes_the_cache_key(override):
    assert cache_key(override) != cache_key()


@pytest.mark.parametrize("override", SAME_WEIGHTS)
def test_a_setting_that_leaves_the_weights_alone_keeps_the_cache_key(override):
    assert cache_key(override) == cache_key()


def test_every_trainer_setting_is_classified_by_the_tests_above():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        trainer_keys = set(compose("train").trainer)
    tested = {o.lstrip("+").split("=")[0].split(".", 1)[1] for o in CHANGE_WEIGHTS + SAME_WEIGHTS
              if o.lstrip("+").startswith("trainer.")}
    assert trainer_keys <= tested, f"untested trainer keys: {sorted(trainer_keys - tested)}"
    assert set(TRAINER_KEYS_NOT_IN_SPEC) <= tested


# -- exact resume after a SIGKILL ------------------------------------------------------------------

# Long enough (about 30 optimizer steps an epoch) that the kill lands well before the end; dropout
# and input shifts make the draws of the random generators part of what must resume exactly.
RESUMABLE = ["data.max_train=2048", "data.max_test=256", "trainer.enable_progress_bar=false",
             "model.dropout=0.2", "data.shift_px=1", "logger.wandb.enabled=false"]
CASES = {
    "baseline": ([*RESUMABLE, "train.epochs=10"], "checkpoints", 10),
    # killed in the quantization stage: the pruning stage is complete, its masks must carry over
    "compress": ([*RESUMABLE, "train.epochs=1", "method=prune_quantize", "method.finetune_epochs=2", "method.rounds=2",
                  "method.quantize_epochs=8", "method.bits=3"], "finetune_quantize/checkpoints", 8),
    "distill": ([*RESUMABLE, "train.epochs=8", "method=distill", "model.hidden=[32]", "method.teacher.hidden=[64]",
                 "+method.compress={pipeline:[prune,quantize],rate:0.5,bits:4}"],
                "checkpoints", 8),
}


def weights(job_dir: Path) -> dict:
    return torch.load(job_dir / "model.pt", map_location="cpu", weights_only=True)["state_dict"]


def kill_after_first_checkpoint(overrides: list[str], job_dir: Path, ckpt_dir: str, epochs: int) -> float:
    """Start the job, SIGKILL it once the fit of `ckpt_dir` (`epochs` long) has written its first
    last.ckpt; returns the training time that checkpoint holds."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "compresslab.train", *overrides, f"hydra.run.dir={job_dir}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = job_dir / ckpt_dir / "last.ckpt"
    deadline = time.time() + 300
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last.is_file() and not (job_dir / "result.json").exists(), "the job ended before it was killed"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["epoch"] < epochs - 1, "killed after the last epoch: nothing left to resume"
    return state["callbacks"]["ResumeState"]["train_time_s"]


@pytest.mark.parametrize("case", list(CASES))
def test_a_killed_job_resumed_from_last_ckpt_ends_bit_for_bit_as_the_uninterrupted_one(workdir, case):
    overrides, ckpt_dir, epochs = CASES[case]
    whole, cut = workdir / "whole", workdir / "cut"
    run_train(*overrides, f"hydra.run.dir={whole}", tiny=False, check=True)  # also trains the cached baseline/teacher
    time_before_kill = kill_after_first_checkpoint(overrides, cut, ckpt_dir, epochs)
    proc = run_train(*overrides, f"hydra.run.dir={cut}", tiny=False, check=True)
    assert "resuming the interrupted attempt" in proc.stdout + proc.stderr

    expected, got = weights(whole), weights(cut)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{case}: {name} differs after resuming"
    (done,) = [r for r in records(workdir) if Path(r["_dir"]) == cut]
    (reference,) = [r for r in records(workdir) if Path(r["_dir"]) == whole]
    assert done["metrics"]["test_acc"] == reference["metrics"]["test_acc"]
    # the record, the CSV log and train.log cover the whole job, both attempts
    assert done["metrics"]["train_time_s"] > time_before_kill > 0
    logged = [list(csv.DictReader(open(d / "csv" / "metrics.csv", newline=""))) for d in (cut, whole)]
    assert logged[0] == logged[1] and any(r.get("val/acc") for r in logged[0])  # every row once, same values
    log = (cut / "train.log").read_text()
    first, resumed = log.find(f" epochs -> {cut}"), log.find("resuming the interrupted attempt")
    assert -1 < first < resumed < log.find("(resuming from")


# -- DDP --------------------------------------------------------------------------------------------

DDP_ENTRY = Path(__file__).with_name("ddp_entry.py")


def test_two_process_ddp_trains_the_same_weights_on_both_ranks_and_rank_zero_alone_reports(workdir):
    job = workdir / "ddp"
    # 500 samples on 2 ranks with batches of 64: 250 each, 4 batches, the last one short, and
    # 2 x 256 is 512, so each epoch's order is padded as DistributedSampler would
    args = [sys.executable, str(DDP_ENTRY), *TINY, "data.max_train=500", "train.epochs=2", "trainer=ddp",
            "trainer.accelerator=cpu", "trainer.devices=2",
            "data=synthetic", "model=mlp", "model.hidden=[32]", "logger.wandb.enabled=false", f"hydra.run.dir={job}"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "DDP_WEIGHTS_DIR": str(workdir / "ranks"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    ranks = [torch.load(workdir / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 2 * 4
    for name, w in ranks[0]["state_dict"].items():
        assert torch.equal(w, ranks[1]["state_dict"][name]), name
    (rec,) = records(workdir)
    assert rec["status"] == "ok" and out.count("compresslab: done") == 1 and out.count("ok: test_acc=") == 1
    saved = weights(job)
    assert all(torch.equal(saved[k], ranks[0]["state_dict"][f"model.{k}"]) for k in saved)
