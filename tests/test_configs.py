"""Every option of every config group and every experiment composes and resolves (outside the hydra
node) to what its file sets: its own values and the group options it picks win over the defaults."""

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


def leaves(node, prefix=()):
    """(key path, value) of every value a config file sets itself, its defaults list and Hydra's
    settings aside; lists are values."""
    for key, value in node.items():
        if not prefix and key in ("defaults", "hydra"):
            continue
        if isinstance(value, dict):
            yield from leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def assert_file_values_composed(path, composed):
    """Every value the file sets itself (interpolations aside) is in the composed config: nothing
    composed after it (a later default, an inherited file) overrides it."""
    own = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    for keys, value in leaves(own):
        if isinstance(value, str) and "${" in value:
            continue
        at = composed
        for key in keys:
            at = at[key]
        assert at == value, f"{path.name}: {'.'.join(keys)} composes to {at!r}, the file sets {value!r}"


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_group_option_composes(group, option):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key in ("data", "model", "train", "method", "trainer", "logger", "paths"):
        assert key in resolved
    assert_file_values_composed(CONF / group / f"{option}.yaml", resolved[group])
    own = OmegaConf.load(CONF / group / f"{option}.yaml")
    if "name" in own:  # a record's data/model/method fields are these names
        assert resolved[group]["name"] == option


@pytest.mark.parametrize("name", options("experiment") if (CONF / "experiment").is_dir() else [])
def test_experiment_composes(name):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    path = CONF / "experiment" / f"{name}.yaml"
    assert_file_values_composed(path, resolved)
    own = OmegaConf.load(path)
    for entry in own.get("defaults", []):
        chosen = entry if isinstance(entry, str) else next(iter(entry.items()))
        if isinstance(chosen, tuple) and chosen[0].startswith("override /"):
            group, option = chosen[0].removeprefix("override /"), chosen[1]
            renamed = OmegaConf.select(own, f"{group}.name") is not None  # checked with the file's values
            if not renamed and "name" in OmegaConf.load(CONF / group / f"{option}.yaml"):
                assert resolved[group]["name"] == option, f"{name}: {group}={option} is not what composed"


def test_model_group_options_name_their_architecture():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model=lenet300_100"])
    assert cfg.model.arch == "mlp" and list(cfg.model.hidden) == [300, 100]
