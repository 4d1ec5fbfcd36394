"""A sweep whose disk fills up stops at once, with one line, and loses no trial: the trial
that hit the full disk continues from its last checkpoint when the same command runs again
(a real tmpfs filled to the last byte, a real sweep process paused at a known step)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, TINY, start_python, train_cli

FAULTS = str(ROOT / "tests" / "faults")


@pytest.fixture
def disk(tmp_path):
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:  # to the last byte
        for chunk in (b"\0" * 65536, b"\0"):
            try:
                while True:
                    f.write(chunk)
            except OSError:
                pass
    return filler


def _args(disk: Path, storage: Path) -> list[str]:
    return [
        *TINY, "epochs=3", "hydra/sweeper=optimlab", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=0",
        f"hydra.sweeper.storage=sqlite:///{storage}", f"hydra.sweep.dir={disk / 'sweep'}", "lr=interval(0.01,0.1)",
    ]  # fmt: skip


@pytest.mark.slow
def test_a_full_disk_stops_the_sweep_at_once_and_the_same_command_continues_its_trial(tmp_path, disk):
    storage, flag = tmp_path / "optuna.db", tmp_path / "paused"  # the study lives on another disk
    pause = {"OPTIMLAB_PAUSE_AT": "2:1", "OPTIMLAB_PAUSE_TRIAL": "1", "OPTIMLAB_PAUSE_FILE": str(flag),
             "PYTHONPATH": os.pathsep.join(filter(None, [FAULTS, os.environ.get("PYTHONPATH")]))}  # fmt: skip
    proc = start_python("-m", *_args(disk, storage), cwd=tmp_path, env=pause)  # the fault hook: a real process
    while not flag.exists():  # trial 0 done, trial 1 inside its epoch 2
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    filler = _fill(disk)
    flag.unlink()
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode not in (0, None), out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    lines = [line for line in out.splitlines() if "the disk of" in line and "is full" in line]
    assert len(lines) == 1, out[-3000:]
    assert str(disk / "sweep") in lines[0] and "MiB free" in lines[0] and "trial(s) 1 continue" in lines[0]
    assert "<" not in lines[0], lines[0]  # no placeholder left in the text

    study = optuna.load_study(study_name="optimlab", storage=f"sqlite:///{storage}")
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "COMPLETE", 1: "FAIL"}, states  # no new trial sampled into the full disk
    assert study.trials[1].user_attrs["status"] == "disk_full"

    filler.unlink()  # room again: the same command continues trial 1, then completes the study
    again = train_cli("-m", *_args(disk, storage), cwd=tmp_path)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    study = optuna.load_study(study_name="optimlab", storage=f"sqlite:///{storage}")
    continued = [t for t in study.trials if t.user_attrs.get("resume_of") == 1]
    assert len(continued) == 1 and continued[0].state.name == "COMPLETE", [(t.number, t.state) for t in study.trials]
    assert continued[0].params == study.trials[1].params
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 3
