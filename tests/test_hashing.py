"""Hashes stored on disk (record config hashes, cache keys, sweep dir names) keep their values: a
change would orphan every cached baseline and teacher and start finished sweeps over."""

from __future__ import annotations

from pathlib import Path

from compresslab import results, reuse, sweep


def test_record_config_hash_keeps_its_value():
    config = {"seed": 0, "model": {"name": "lenet300_100", "hidden": [300, 100]}, "x": 0.5,
              "p": Path("/a"), "paths": {"out": "x"}}
    assert results.config_hash(config) == "78a6dee23b4bfc53"


def test_cache_key_keeps_its_value():
    assert reuse.key_of({"data": {"name": "mnist"}, "seed": 0, "lr": 0.1, "p": Path("/a")}) == "7a1ba5dba6e9da3b"


def test_sweep_dir_name_keeps_its_value():
    assert sweep.sweep_dirname("prune", ["method.rate=0.9", "seed=1", "force=true"]) == "prune-066eb9c7"


def test_hashed_job_dir_name_keeps_its_value():
    name = sweep.job_dirname(["method.exclude=[conv1,fc2]", "seed=1", "note=a b"], [])
    assert name == "method.exclude=[conv1,fc2],note=a_b,seed=1-69010424"
