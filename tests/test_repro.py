"""Reproducibility: identical runs, bit-exact resume after kill -9, atomic checkpoints,
re-run from a folder (single run and sweep trial), seeded sweeps.

Every run is ``python train.py`` (or ``python -m optimlab.rerun``) on a tiny synthetic
dataset: a real subprocess where a fault hook kills it (and `b`, the identical twin of `a`),
Hydra's main in this process for the rest, while those subprocesses run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config, finish, run_in_process
from conftest import start_python as start

from optimlab.engine.training import TIMING_COLUMNS
from optimlab.errors import CheckpointError, ConfigError
from optimlab.run.folder import RunFolder

# tests/faults/sitecustomize.py: SIGKILL the run just before step S of epoch E ("E" or "E:S")
KILL_ENV = "OPTIMLAB_KILL_AT"
FAULTS = str(Path(__file__).resolve().parent / "faults")


def kill_at(spec: str) -> dict[str, str]:
    return {KILL_ENV: spec, "PYTHONPATH": os.pathsep.join(filter(None, [FAULTS, os.environ.get("PYTHONPATH")]))}


def load_checkpoint(run_dir: Path) -> dict:
    return RunFolder(run_dir, create=False).load_checkpoint().payload

pytestmark = pytest.mark.slow

# Adam + OneCycle (stepped every batch): 8 steps per epoch, 3 epochs.
BASE = [*TINY, "data.image_size=8", "data.channels=1", "seed=3"]
FAST = [*BASE, "optimizer=adam", "scheduler=onecycle", "lr=3e-3"]
ADAM_ONECYCLE = [*FAST, "epochs=3"]


def metrics(run_dir: Path, timing: bool = False) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows if timing else [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_same_state(a: Path, b: Path) -> None:
    """Final weights, optimizer state and best-epoch weights of two run folders are bitwise equal."""
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["epoch"] == cb["epoch"]
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), f"weights differ in {k}"
    for pa, pb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True):
        for k in pa:
            assert torch.equal(torch.as_tensor(pa[k]), torch.as_tensor(pb[k])), f"optimizer state differs in {k}"
    assert ca["scheduler"] == cb["scheduler"]
    # the best epoch's weights (best.pt), which the test figures come from
    ba, bb = (RunFolder(d, create=False).load_best() for d in (a, b))
    assert ba["epoch"] == bb["epoch"] and ba["value"] == bb["value"]
    for k in ba["model"]:
        assert torch.equal(ba["model"][k], bb["model"][k]), f"best weights differ in {k}"


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder`` with its content hash and mtime."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- runs shared by the tests

# Momentum SGD + StepLR: a schedule that does not depend on `epochs`, so a run may be extended.
STEP = [*BASE, "optimizer=momentum", "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=0.5"]

SWEEP = [
    *BASE,
    "optimizer=adam",
    "scheduler=onecycle",
    "epochs=2",
    "hydra/sweeper=optuna",
    "hydra.sweeper.n_trials=3",
    "hydra.sweeper.n_jobs=1",
    "hydra.sweeper.sampler.seed=123",
    "hydra.sweeper.direction=maximize",
    "lr=tag(log, interval(1e-4, 1e-1))",
    "momentum=interval(0.5, 0.95)",
]
# The same search with optimlab's sweeper (persistent study in the sweep folder).
OSWEEP = [
    *(o for o in SWEEP if not o.startswith(("hydra/sweeper=", "hydra.sweeper.n_jobs", "hydra.sweeper.direction"))),
    "hydra/sweeper=optimlab",
]


def run_wave(jobs: dict[str, dict], cwd: Path) -> dict[str, tuple[int, str]]:
    """Run independent jobs (kwargs of :func:`start`): the ones with fault hooks (or marked
    ``process``) as real processes, started first, and the rest in this process meanwhile."""
    started = {name: start(*job["args"], cwd=cwd, env=job.get("env"), module=job.get("module"))
               for name, job in jobs.items() if job.get("process") or "PYTHONPATH" in job.get("env", {})}  # fmt: skip
    done = {}
    for name, job in jobs.items():
        if name not in started:
            result = run_in_process(job["args"], cwd=cwd, env=job.get("env"), module=job.get("module"))
            done[name] = result.returncode, result.stdout + result.stderr
    for name, proc in started.items():
        done[name] = finish(proc, timeout=600)
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Two waves of real runs.

    wave 1: Adam + OneCycle reference `a`, identical `b`, `killed` by SIGKILL at step 3 of
            epoch 2; StepLR reference `s3` (3 epochs), `s2k`: 2 epochs, killed right after
            epoch 1's checkpoint; two identical seeded sweeps.
    wave 2: resume `killed`; resume `s2k` extended to 3 epochs; resume the completed `a`;
            a resume with a changed lr (must fail); re-run `a` and one sweep trial.
    """
    base = tmp_path_factory.mktemp("repro")
    quiet = ["plots=false"] if "plots" in compose_config() else []  # no matplotlib: faster
    d = {name: base / name for name in ("a", "b", "killed", "s3", "s2k", "sweep1", "sweep2", "osweep1", "osweep2")}
    out = run_wave(
        {
            "a": {"args": [*ADAM_ONECYCLE, *quiet, f"hydra.run.dir={d['a']}"]},
            "b": {"args": [*ADAM_ONECYCLE, *quiet, f"hydra.run.dir={d['b']}"], "process": True},  # vs `a`: another process
            "killed": {"args": [*ADAM_ONECYCLE, *quiet, f"hydra.run.dir={d['killed']}"], "env": kill_at("2:3")},
            "s3": {"args": [*STEP, *quiet, "epochs=3", f"hydra.run.dir={d['s3']}"]},
            "s2k": {"args": [*STEP, *quiet, "epochs=2", f"hydra.run.dir={d['s2k']}"], "env": kill_at("2")},
            "sweep1": {"args": ["-m", *SWEEP, *quiet, f"hydra.sweep.dir={d['sweep1']}"]},
            "sweep2": {"args": ["-m", *SWEEP, *quiet, f"hydra.sweep.dir={d['sweep2']}"]},
            "osweep1": {"args": ["-m", *OSWEEP, *quiet, f"hydra.sweep.dir={d['osweep1']}"]},
            "osweep2": {"args": ["-m", *OSWEEP, *quiet, f"hydra.sweep.dir={d['osweep2']}"]},
        },
        cwd=base,
    )
    before = {name: snapshot(d[name]) for name in ("a", "killed", "s2k", "osweep1")}
    for name in ("resumed", "resumed_s", "resumed_done", "bad_resume"):
        d[name] = base / name
    d["trial"] = d["osweep1"] / "trial_0001"  # an optimlab sweep's trial (its study must not hear of the re-run)
    d["rerun"], d["rerun_trial"] = base / "rerun" / "a", base / "rerun" / "trial"
    out.update(
        run_wave(
            {
                "resumed": {"args": [f"resume={d['killed']}", f"hydra.run.dir={d['resumed']}"]},
                "resumed_s": {
                    "args": [f"resume={d['s2k']}", "epochs=3", "checkpoint.every=2", f"hydra.run.dir={d['resumed_s']}"]
                },
                "resumed_done": {"args": [f"resume={d['a']}", f"hydra.run.dir={d['resumed_done']}"]},
                "bad_resume": {"args": [f"resume={d['killed']}", "lr=0.1", f"hydra.run.dir={d['bad_resume']}"]},
                # the re-runs go to Hydra's default outputs/<date>/<time>_<id>/ pattern
                "rerun": {"args": [str(d["a"])], "module": "optimlab.rerun"},
                "rerun_trial": {"args": [str(d["trial"])], "module": "optimlab.rerun"},
            },
            cwd=base,
        )
    )
    for name in ("rerun", "rerun_trial"):
        code, log = out[name]
        assert code == 0, log[-3000:]
        (d[name],) = [p for p in (base / "outputs").glob("*/*") if summary(p).get("rerun_of") == str(
            d["a" if name == "rerun" else "trial"])]
    return {"dirs": d, "out": out, "before": before}


def ok(runs: dict, name: str) -> Path:
    code, log = runs["out"][name]
    assert code == 0, f"{name} exited {code}:\n{log[-3000:]}"
    return runs["dirs"][name]


def test_identical_runs_are_bitwise_identical(runs):
    a, b = ok(runs, "a"), ok(runs, "b")
    assert len(metrics(a)) == 3
    assert metrics(a) == metrics(b)  # repr-exact floats: lr, losses, accuracy
    assert_same_state(a, b)
    assert summary(a)["objective"] == summary(b)["objective"]
    assert summary(a)["test"] == summary(b)["test"]


def test_kill_mid_epoch_then_resume_equals_uninterrupted(runs):
    """SIGKILL at step 3 of epoch 2 (Adam + per-batch OneCycle), resume → same numbers."""
    code, log = runs["out"]["killed"]
    assert code == -signal.SIGKILL, log[-2000:]
    killed = runs["dirs"]["killed"]
    assert load_checkpoint(killed)["epoch"] == 1
    assert summary(killed)["status"] == "running"  # died without a word

    resumed = ok(runs, "resumed")
    a = runs["dirs"]["a"]
    assert metrics(resumed) == metrics(a)
    assert_same_state(resumed, a)
    s = summary(resumed)
    assert s["status"] == "completed"
    assert s["resumed_from"]["run_dir"] == str(killed) and s["resumed_from"]["epoch"] == 1
    assert s["objective"] == summary(a)["objective"] and s["test"] == summary(a)["test"]
    # the resumed folder keeps the original's epoch 1 row (timings too): not re-trained
    assert metrics(resumed, timing=True)[0] == metrics(killed, timing=True)[0]
    assert snapshot(killed) == runs["before"]["killed"], "resume wrote into the original folder"


def test_kill_after_a_checkpoint_then_resume_extended_to_more_epochs(runs):
    """Killed right after epoch 1's checkpoint (2-epoch StepLR run), resumed with epochs=3
    (a harmless change: the schedule does not depend on it) → equals a 3-epoch run."""
    code, _ = runs["out"]["s2k"]
    assert code == -signal.SIGKILL
    s2k = runs["dirs"]["s2k"]
    assert load_checkpoint(s2k)["epoch"] == 1 and len(metrics(s2k)) == 1

    resumed, s3 = ok(runs, "resumed_s"), ok(runs, "s3")
    assert len(metrics(s3)) == 3
    assert metrics(resumed) == metrics(s3)
    assert_same_state(resumed, s3)
    assert summary(resumed)["resumed_from"]["changed"] == {
        "epochs": {"saved": 2, "now": 3},
        "checkpoint.every": {"saved": 1, "now": 2},
    }
    assert snapshot(s2k) == runs["before"]["s2k"]


def test_resuming_a_completed_run_does_not_retrain(runs):
    done = ok(runs, "resumed_done")
    a = runs["dirs"]["a"]
    assert "nothing to train" in runs["out"]["resumed_done"][1]
    assert metrics(done, timing=True) == metrics(a, timing=True)  # history copied, no epoch ran again
    assert_same_state(done, a)
    assert summary(done)["status"] == "completed" and summary(done)["test"] == summary(a)["test"]
    assert snapshot(a) == runs["before"]["a"]


def test_resume_with_a_changed_key_fails_and_leaves_the_original_untouched(runs):
    code, log = runs["out"]["bad_resume"]
    assert code == 2, log[-2000:]
    assert "lr: saved 0.003, now 0.1" in log and "optimizer.lr" in log
    assert "Traceback" not in log
    assert not (runs["dirs"]["bad_resume"] / "checkpoint.pt").exists()
    assert summary(runs["dirs"]["bad_resume"])["status"] == "invalid_config"
    assert snapshot(runs["dirs"]["killed"]) == runs["before"]["killed"]


def test_rerun_from_a_folder_reproduces_the_run(runs):
    rerun, a = runs["dirs"]["rerun"], runs["dirs"]["a"]
    assert rerun != a and rerun.parent.parent.name == "outputs"  # a new folder, Hydra's pattern
    assert metrics(rerun) == metrics(a)
    assert_same_state(rerun, a)
    s = summary(rerun)
    assert s["rerun_of"] == str(a) and s["command"].startswith("python -m optimlab.rerun")
    assert s["objective"] == summary(a)["objective"]
    assert (rerun / "train.log").is_file()  # Hydra's settings came along (job name -> log file)
    assert snapshot(a) == runs["before"]["a"]


# --------------------------------------------------------------------------- resume errors (no training)


def _prepare(folder: Path, *extra: str):
    from optimlab.run.resume import prepare

    overrides = [*ADAM_ONECYCLE, f"resume={folder}", *extra]
    return prepare(compose_config(overrides), overrides)


def test_resume_errors_name_what_is_wrong(runs, tmp_path):
    killed = runs["dirs"]["killed"]
    before = snapshot(killed)
    with pytest.raises(CheckpointError, match="does not exist"):
        _prepare(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="checkpoint.pt does not exist"):
        _prepare(tmp_path / "empty")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    data = (killed / "checkpoint.pt").read_bytes()
    (corrupt / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        _prepare(corrupt)

    # a checkpoint that belongs to another run: its config disagrees with the folder's
    other = tmp_path / "other"
    (other / ".hydra").mkdir(parents=True)
    (other / "checkpoint.pt").write_bytes(data)
    (other / ".hydra" / "config.yaml").write_text(
        (killed / ".hydra" / "config.yaml").read_text().replace("seed: 3", "seed: 4")
    )
    with pytest.raises(CheckpointError, match=r"does not belong to this run folder.*seed: folder 4, checkpoint 3"):
        _prepare(other)

    # OneCycle's length follows `epochs`: extending it would change the schedule
    with pytest.raises(ConfigError, match=r"scheduler\.epochs: saved 3, now 5"):
        _prepare(killed, "epochs=5")
    with pytest.raises(ConfigError, match="momentum"):
        _prepare(killed, "momentum=0.5")
    with pytest.raises(ConfigError, match="optimizer._target_"):
        _prepare(killed, "optimizer=sgd")
    assert _prepare(killed, "quiet=false", "checkpoint.every=3").epoch == 1
    assert snapshot(killed) == before


# --------------------------------------------------------------------------- atomic checkpoint writes

SAVE_SCRIPT = """
import sys, torch
from optimlab.run.folder import RunFolder
folder = RunFolder(sys.argv[1])
folder.write_checkpoint({"epoch": 1, "w": torch.arange(10.0)})
big = {"epoch": 2, "w": torch.ones(64 * 2**20)}  # 256 MB: the write takes a while
print("saving", flush=True)
folder.write_checkpoint(big)
print("saved", flush=True)
"""


def test_kill_during_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", SAVE_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "saving"
    deadline = time.monotonic() + 120
    tmp_files: list[Path] = []
    while not tmp_files and time.monotonic() < deadline:
        tmp_files = list(tmp_path.glob(".checkpoint.pt.*.tmp"))  # the write has begun
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert tmp_files, "the save never reached its write"
    assert proc.returncode == -signal.SIGKILL
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert payload["epoch"] == 1 and torch.equal(payload["w"], torch.arange(10.0))
    # what the killed write left behind is a stray temp file, never checkpoint.pt
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["checkpoint.pt"]


def test_run_folder_checkpoint_round_trip(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_checkpoint({"epoch": 0})
    with pytest.raises(CheckpointError, match="not an optimlab checkpoint"):
        load_checkpoint(tmp_path)


# --------------------------------------------------------------------------- sweeps


def _trials(sweep_dir: Path) -> list[tuple[dict, float, list]]:
    """(params, objective, metrics) of every trial folder, in trial order."""
    found = []
    for job in sorted(p for p in sweep_dir.iterdir() if (p / "summary.json").is_file()):
        s = summary(job)
        params = dict(o.split("=", 1) for o in s["overrides"] if o.split("=")[0] in ("lr", "momentum"))
        found.append((params, s["objective"]["value"], metrics(job)))
    return found


@pytest.mark.parametrize("sweeper", ["optuna", "optimlab"])
def test_seeded_one_worker_sweep_twice_gives_the_same_trials(runs, sweeper):
    prefix = "" if sweeper == "optuna" else "o"
    first, second = (_trials(ok(runs, f"{prefix}sweep{i}")) for i in (1, 2))
    assert len(first) == 3
    assert len({tuple(sorted(p.items())) for p, _, _ in first}) == 3  # the sampler really sampled
    assert all(set(p) == {"lr", "momentum"} for p, _, _ in first)
    assert first == second  # same params, same objective values, same per-epoch metrics


def test_rerun_of_a_sweep_trial_reproduces_it(runs):
    rerun, trial = runs["dirs"]["rerun_trial"], runs["dirs"]["trial"]
    assert metrics(rerun) == metrics(trial)
    assert_same_state(rerun, trial)
    assert summary(rerun)["objective"] == summary(trial)["objective"]
    assert summary(rerun)["status"] == "completed"
    # the trial's identity (OPTIMLAB_TRIAL_ID, storage) is not carried: the study is untouched
    assert snapshot(runs["dirs"]["osweep1"]) == runs["before"]["osweep1"]
