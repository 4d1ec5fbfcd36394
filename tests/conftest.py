"""Shared test helpers: Hydra compose, tiny configs, and real `python train.py` subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from optimlab.config import resolvers

resolvers.register()  # ${optimlab.uid:} in the run-dir patterns

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
TRAIN_PY = ROOT / "train.py"

# A tiny synthetic dataset: one epoch trains in well under a second on CPU.
TINY = [
    "data=synthetic",
    "data.train_size=256",
    "data.val_size=64",
    "data.test_size=64",
    "batch_size=32",
    "epochs=1",
    "tensorboard=false",
    "quiet=true",
    "plots=false",
]


def compose_config(overrides=()):
    """The composed job config (no `hydra` node), as `python train.py <overrides>` would get."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name="config", overrides=list(overrides))


def train_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python train.py <args>` for real in ``cwd`` (outputs/ and multirun/ land there)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(TRAIN_PY), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def run_dirs(base: Path, pattern: str = "outputs/*/*") -> list[Path]:
    """Run folders under ``base`` (single runs by default), oldest first."""
    return sorted(p for p in base.glob(pattern) if p.is_dir())


@pytest.fixture
def tiny():
    return list(TINY)
