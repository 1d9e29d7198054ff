"""Bad input through the real entry point: each case must exit non-zero with one clear line that
names the key (and what would work), write a `failed` record with that line, and train nothing."""

from __future__ import annotations

import pytest

from compresslab import keys, results
from conftest import records, run_train

COMMON = ("data=synthetic", "model=mlp", "model.hidden=[16]", "logger=none")

# (overrides, what the one line must say)
BAD_INPUT = [
    (["seed=-1"], "seed=-1 is out of range: it must be in [0, 4294967295]"),
    (["seed=4294967296"], "seed=4294967296 is out of range: it must be in [0, 4294967295]"),
    (["train.optimizer.lr=nan"], "train.optimizer.lr=nan must be a finite number in (0, inf]"),
    (["train.optimizer.weight_decay=inf"], "train.optimizer.weight_decay=inf must be a finite number"),
    (["method=prune", "method.rate=nan"], "method.rate=nan must be a finite number in [0, 1)"),
    (["method=quantize", "method.scale=inf"], "method.scale=inf must be a finite number in (0, inf]"),
    (["method=distill", "method.temperature=nan"], "method.temperature=nan must be a finite number"),
    (["model.hidden=[abc]"], "model.hidden[0]='abc' must be an integer in [1, inf]"),
    (["model.hidden=[0]"], "model.hidden[0]=0 is out of range: it must be in [1, inf]"),
    (["threads=0"], "threads=0 is out of range: it must be in [1, inf]"),
    (["method=prune", "+method.rat=0.5"], "unknown config key method.rat: nothing reads it; did you mean method.rate?"),
    (["+trainer.max_epochs=abc"], "trainer.max_epochs is set by train.epochs"),
    (["+train.scheduler.gama=0.5"], "unknown config key train.scheduler.gama: nothing reads it; did you mean "
                                    "train.scheduler.gamma?"),
    (["+sed=1"], "unknown config key sed: nothing reads it; did you mean seed?"),
    (["method=distill", "+method.rate=0.5"], "unknown config key method.rate: nothing reads it"),
]


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("compresslab:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("overrides,message", BAD_INPUT, ids=[" ".join(o) for o, _ in BAD_INPUT])
def test_bad_input_fails_with_one_line_and_a_record(workdir, overrides, message):
    proc = run_train(*COMMON, *overrides)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = one_line(proc.stderr)
    assert message in line
    assert "Traceback" not in proc.stderr + proc.stdout
    (rec,) = records(workdir / "outputs")
    results.validate({k: v for k, v in rec.items() if k != "_dir"})
    assert rec["status"] == "failed" and message in rec["error"]
    assert rec["metrics"] == {} and not (workdir / "outputs" / "cache").exists()  # nothing trained


def test_real_trainer_arguments_are_not_refused(workdir):
    proc = run_train(*COMMON, "+trainer.max_time=null", "+trainer.fast_dev_run=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rec,) = records(workdir / "outputs")
    assert rec["status"] == "ok"


@pytest.mark.parametrize("overrides", [
    ["train.optimizer.name=sgd", "train.optimizer.lr=1e6", "train.epochs=2"],
    ["method=prune", "train.optimizer.name=sgd", "train.optimizer.lr=1e6", "train.epochs=2"],
], ids=["baseline", "prune (its baseline diverges)"])
def test_a_diverging_run_fails_and_caches_nothing(workdir, overrides):
    proc = run_train(*COMMON, *overrides)
    assert proc.returncode == 1
    line = one_line(proc.stderr)
    assert "training diverged" in line and "lower train.optimizer.lr" in line
    (rec,) = records(workdir / "outputs")
    assert rec["status"] == "failed" and "training diverged" in rec["error"]
    assert not list((workdir / "outputs").rglob("cache/**/model.pt")), "a non-finite model was cached"
    assert "Traceback" not in proc.stderr + proc.stdout


def _options(group: str) -> list[str]:
    return sorted(f"{group}={p.stem}" for p in (keys.CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("override", [*_options("experiment"), *_options("sweep"), *_options("method"),
                                      *_options("model"), *_options("data"), *_options("trainer"),
                                      *_options("logger")])
def test_every_shipped_config_passes_the_unknown_key_check(override):
    """No false alarm: every option of conf/ composes into a config whose every key is known."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    if override == "sweep=search_prune_rate":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install 'compresslab[search]'")
    with initialize_config_dir(str(keys.CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[override])
    config = OmegaConf.to_container(cfg, resolve=False)
    config.pop("hydra", None)
    keys.check(OmegaConf.to_container(OmegaConf.create(config), resolve=True))
