"""Shared fixtures: every end-to-end test runs the real entry point on tiny data in a temp dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("COMPRESSLAB_DATA_DIR", REPO / "data"))

# Small and fast everywhere: tiny data, one epoch, no progress bar, W&B offline.
TINY = ["train.epochs=1", "trainer.enable_progress_bar=false", "data.max_train=512", "data.max_test=256"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh project root for one test: outputs and caches land here, data is shared."""
    monkeypatch.setenv("COMPRESSLAB_ROOT", str(tmp_path))
    monkeypatch.setenv("COMPRESSLAB_DATA_DIR", str(DATA_DIR))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_train(*overrides: str, multirun: bool = False, tiny: bool = True, cwd: Path | None = None,
              env: dict | None = None, check: bool | None = None) -> subprocess.CompletedProcess:
    """`python -m compresslab.train` in a subprocess, exactly as a user runs it."""
    args = [sys.executable, "-m", "compresslab.train", *(["-m"] if multirun else []),
            *(TINY if tiny else []), *overrides]
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    proc = subprocess.run(args, cwd=cwd or Path.cwd(), env=full_env, capture_output=True, text=True,
                          timeout=600)
    if check is True and proc.returncode != 0:
        raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def records(root: Path) -> list[dict]:
    """Every result.json under `root`, sorted by path."""
    return [json.loads(p.read_text()) | {"_dir": str(p.parent)}
            for p in sorted(Path(root).rglob("result.json")) if "cache" not in p.parts]


@pytest.fixture
def train():
    return run_train
