"""Every option of every config group composes and resolves (outside the hydra node)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import compresslab.train  # noqa: F401 - registers the resolvers the configs use

CONF = Path(compresslab.train.CONF_DIR)
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "experiment", "sweep"))


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_group_option_composes(group, option):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved[group] is not None
    for key in ("data", "model", "train", "method", "trainer", "logger", "paths"):
        assert key in resolved


@pytest.mark.parametrize("name", options("experiment") if (CONF / "experiment").is_dir() else [])
def test_experiment_composes(name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"])
    OmegaConf.to_container(cfg, resolve=True)


def test_model_group_options_name_their_architecture():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model=lenet300_100"])
    assert cfg.model.arch == "mlp" and list(cfg.model.hidden) == [300, 100]
