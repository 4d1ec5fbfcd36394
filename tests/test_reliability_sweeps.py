"""Sweeps that survive dead workers, dead parents and bad input: real `train.py -m`
processes, real signals (SIGKILL, SIGTERM), real SQLite and journal storages.

A worker is killed at an exact point by tests/faults/sitecustomize.py (OPTIMLAB_KILL_AT,
a real SIGKILL from inside the process) or held before an epoch (OPTIMLAB_HANG_AT) so a
signal from outside always finds its trial mid-run; the tests wait on files (a trial's
metrics.csv gaining a row), never on sleeps.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import ROOT, TRAIN_PY, train_cli
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from test_sweep import SWEEP_TINY

FAULTS = str(ROOT / "tests" / "faults")
# 3 epochs, a checkpoint after each: a trial killed in epoch 2 resumes from epoch 1
SPACE = [*SWEEP_TINY, "checkpoint.every=1", "epochs=3", "lr=interval(0.01,0.1)", "hydra.sweeper.plots=false",
         "hydra.sweeper.sampler.seed=0"]  # fmt: skip


def sweep_args(name: str, *extra: str) -> list[str]:
    return ["-m", "hydra/sweeper=optimlab", f"hydra.sweep.dir=multirun/{name}", *SPACE, *extra]


def storage_of(kind: str, root: Path, name: str) -> tuple[list[str], object]:
    """The override that picks the storage and the storage to read it back with."""
    folder = root / "multirun" / name
    if kind == "journal":
        path = folder / "optuna.journal"
        return [f"hydra.sweeper.storage=journal://{path}"], lambda: JournalStorage(JournalFileBackend(str(path)))
    return [], lambda: f"sqlite:///{folder / 'optuna.db'}"


def load(storage) -> optuna.Study:
    return optuna.load_study(study_name="optimlab", storage=storage())


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out = proc.log_path.read_text() if hasattr(proc, "log_path") else ""
            raise AssertionError(f"the sweep ended (code {proc.returncode}) before {what}:\n{out[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def metric_rows(folder: Path) -> int:
    path = folder / "metrics.csv"
    return max(0, len(path.read_text().strip().splitlines()) - 1) if path.exists() else 0


def trials_csv(root: Path, name: str) -> list[dict]:
    with open(root / "multirun" / name / "trials.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted seeded 1-worker sweep of the same space: params -> value."""
    root = tmp_path_factory.mktemp("reference")
    ok(train_cli(*sweep_args("ref", "hydra.sweeper.n_trials=1"), cwd=root))
    study = optuna.load_study(study_name="optimlab", storage=f"sqlite:///{root}/multirun/ref/optuna.db")
    (trial,) = study.trials
    return trial.params, trial.value, trial.intermediate_values


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_sigkilled_worker_trial_resumes_on_rerun(tmp_path, kind, reference):
    pick, storage = storage_of(kind, tmp_path, "k")
    args = sweep_args("k", *pick, "hydra.sweeper.n_trials=2")
    # SIGKILL in the middle of epoch 2 of the first trial (epoch 1 is checkpointed)
    killed = train_cli(*args, cwd=tmp_path, env={"PYTHONPATH": FAULTS, "OPTIMLAB_KILL_AT": "2:1"})
    assert killed.returncode == -signal.SIGKILL
    (first,) = load(storage).trials
    assert first.state.name == "RUNNING"  # what a dead worker leaves behind
    dead_pid = first.user_attrs["owner"]["pid"]

    ok(train_cli(*args, cwd=tmp_path))  # the same command again
    study = load(storage)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "FAIL"]  # none RUNNING/WAITING
    dead = study.trials[0]
    assert dead.user_attrs["fail_reason"] == f"worker pid {dead_pid} on host {socket.gethostname()} died"
    (resumed,) = [t for t in study.trials if t.user_attrs.get("resume_of") == 0]
    assert resumed.params == dead.params == reference[0]  # the seeded sweep's first params
    assert resumed.value == reference[1]  # the value an uninterrupted sweep found, exactly
    # the pruner sees the whole curve: epoch 1 (reported by the dead attempt) is reported again
    assert resumed.intermediate_values == reference[2] and len(reference[2]) == 3
    root = tmp_path / "multirun" / "k"
    summary = json.loads((root / f"trial_{resumed.number:04d}" / "summary.json").read_text())
    assert summary["resumed_from"]["run_dir"] == str(root / "trial_0000") and summary["resumed_from"]["epoch"] == 1
    # the dead attempt stays visible, with its reason, and no longer says running
    assert json.loads((root / "trial_0000" / "summary.json").read_text())["status"] == "died"
    rows = {int(r["number"]): r for r in trials_csv(tmp_path, "k")}
    assert (rows[0]["state"], rows[0]["status"]) == ("FAIL", "died")
    assert rows[0]["reason"] == dead.user_attrs["fail_reason"]


@pytest.mark.slow
def test_a_killed_grid_point_is_continued_on_rerun(tmp_path):
    """A grid counts a dead attempt's point as visited; the rerun still continues it."""
    args = ["-m", "hydra/sweeper=optimlab", "hydra.sweep.dir=multirun/g", *SPACE[:-3], "hydra.sweeper.plots=false",
            "hydra/sweeper/sampler=grid", "lr=choice(0.02,0.05)"]  # fmt: skip
    killed = train_cli(*args, cwd=tmp_path, env={"PYTHONPATH": FAULTS, "OPTIMLAB_KILL_AT": "2:1"})
    assert killed.returncode == -signal.SIGKILL
    ok(train_cli(*args, cwd=tmp_path))
    study = load(lambda: f"sqlite:///{tmp_path / 'multirun' / 'g' / 'optuna.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "FAIL"]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["lr"] for t in done) == [0.02, 0.05]  # the whole grid, the killed point included
    (continued,) = [t for t in done if t.user_attrs.get("resume_of") == 0]
    assert continued.params == study.trials[0].params


@pytest.mark.slow
def test_sigkilled_worker_of_two_on_the_default_journal(tmp_path):
    # n_workers=2 uses the journal file; the worker running trial 0 dies in epoch 2
    args = sweep_args("w", "hydra.sweeper.n_workers=2", "hydra.sweeper.n_trials=2")
    first = train_cli(*args, cwd=tmp_path, env={"PYTHONPATH": FAULTS, "OPTIMLAB_KILL_AT": "2:1", "OPTIMLAB_KILL_TRIAL": "0"})
    # the other worker continues trial 0 once it sees its owner gone, or it had already
    # stopped: either way the parent says which worker died, in one line
    assert first.returncode == 1
    line = one_line_error(first)
    assert re.fullmatch(r"Error: worker\(s\) [01] was killed by SIGKILL; .* run the same command to resume the study\.", line), line

    ok(train_cli(*args, cwd=tmp_path))  # the same command again
    study = load(journal(tmp_path, "w"))
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 2 and "RUNNING" not in states and "WAITING" not in states
    dead = study.trials[0]
    assert dead.state.name == "FAIL" and dead.user_attrs["fail_reason"].endswith("died")
    (continued,) = [t for t in study.trials if t.user_attrs.get("resume_of") == 0]
    assert continued.state.name == "COMPLETE" and continued.params == dead.params
    summary = json.loads((tmp_path / "multirun" / "w" / f"trial_{continued.number:04d}" / "summary.json").read_text())
    assert summary["resumed_from"]["epoch"] == 1


def start_two_workers(tmp_path, name: str) -> subprocess.Popen:
    """A 2-worker journal sweep whose trials both wait before epoch 2 (epoch 1 written)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": FAULTS, "OPTIMLAB_HANG_AT": "2"}
    log = open(tmp_path / f"{name}.log", "w")  # a file, not a pipe: workers never block on output
    proc = subprocess.Popen([sys.executable, str(TRAIN_PY), *sweep_args(name, "hydra.sweeper.n_workers=2",
                             "hydra.sweeper.n_trials=2")], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    proc.log_path = Path(log.name)
    root = tmp_path / "multirun" / name
    wait_for(lambda: sum(metric_rows(d) >= 1 for d in root.glob("trial_*")) == 2, 240, "both trials to finish epoch 1", proc)
    return proc


# A preempted job has seconds: every worker must be gone this soon after its parent is
# killed or told to stop, with LOAD busy processes on the machine (measured: ~0.2 s at load 4
# on 2 cores; the interpreter's own teardown alone took ~3 s before workers left by os._exit)
EXIT_BOUND = 3.0
LOAD = 4


@contextlib.contextmanager
def busy_cpus(n: int):
    """n real busy processes: the load a shared cluster node has while a job is preempted."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def still_running(processes: list[psutil.Process], within: float) -> list[int]:
    """The pids still running after `within` s; a zombie (dead, not yet reaped by whoever
    inherited it) has ended and counts as gone."""
    deadline = time.monotonic() + within

    def running() -> list[int]:
        out = []
        for p in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p.pid)
        return out

    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    return running()


def journal(tmp_path, name: str):
    path = tmp_path / "multirun" / name / "optuna.journal"
    return lambda: JournalStorage(JournalFileBackend(str(path)))


@pytest.mark.slow
def test_parent_sigkill_leaves_no_worker_and_marks_trials_for_resumption(tmp_path):
    parent = start_two_workers(tmp_path, "p")
    workers = psutil.Process(parent.pid).children()
    assert len(workers) == 2
    with busy_cpus(LOAD):
        parent.kill()
        parent.wait()
        alive = still_running(workers, EXIT_BOUND)
    assert not alive, f"workers still running {EXIT_BOUND} s after their parent was killed: {alive}"
    study = load(journal(tmp_path, "p"))
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]  # neither left RUNNING
    for t in study.trials:
        assert "stopped by SIGTERM (preempted)" in t.user_attrs["fail_reason"]
        assert t.user_attrs["resumable"] is True


@pytest.mark.slow
def test_parent_sigterm_is_forwarded_and_the_rerun_resumes_the_trials(tmp_path):
    parent = start_two_workers(tmp_path, "t")
    workers = psutil.Process(parent.pid).children()
    with busy_cpus(LOAD):
        parent.send_signal(signal.SIGTERM)
        alive = still_running(workers, EXIT_BOUND)
        parent.wait(timeout=120)
    out = parent.log_path.read_text()
    assert not alive, f"workers still running {EXIT_BOUND} s after the sweep's SIGTERM: {alive}"
    assert parent.returncode == 143, out[-3000:]
    assert "Traceback" not in out
    root = tmp_path / "multirun" / "t"
    for folder in sorted(root.glob("trial_*")):
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"] == "preempted" and summary["epochs_completed"] == 1

    ok(train_cli(*sweep_args("t", "hydra.sweeper.n_workers=2", "hydra.sweeper.n_trials=2"), cwd=tmp_path))
    study = load(journal(tmp_path, "t"))
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    resumed = {t.user_attrs["resume_of"]: t for t in study.trials if "resume_of" in t.user_attrs}
    assert sorted(resumed) == [0, 1]
    for number, t in resumed.items():
        assert t.params == study.trials[number].params
        summary = json.loads((root / f"trial_{t.number:04d}" / "summary.json").read_text())
        assert summary["resumed_from"]["epoch"] == 1 and summary["epochs_completed"] == 3


# --------------------------------------------------------------------------- bad input


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def one_line_error(proc) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, None), out[-3000:]
    assert "Traceback" not in out and "HYDRA_FULL_ERROR" not in out, out[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Warning:" not in out, out[-3000:]  # no FutureWarning / UserWarning either
    return errors[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_studies(root: Path) -> None:
    """A finished SQLite study (then truncated) and a journal study (then torn), made with Optuna."""
    for name, storage in (("db", f"sqlite:///{root}/multirun/db/optuna.db"), ("jr", None)):
        (root / "multirun" / name).mkdir(parents=True)
        if storage is None:
            storage = JournalStorage(JournalFileBackend(str(root / "multirun" / name / "optuna.journal")))
        study = optuna.create_study(study_name="optimlab", storage=storage, direction="maximize")
        for value in (0.1, 0.2, 0.3):
            study.add_trial(optuna.trial.create_trial(params={"lr": 0.05}, value=value,
                                                      distributions={"lr": optuna.distributions.FloatDistribution(0.01, 0.1)}))  # fmt: skip
    db = root / "multirun" / "db" / "optuna.db"
    os.truncate(db, db.stat().st_size // 2)
    with open(root / "multirun" / "jr" / "optuna.journal", "ab") as f:
        f.write(b'{"op_code": 5, "worker_id": "torn')


BAD = {
    "bogus_storage": (["hydra.sweeper.storage=bogus://x"], "bogus://x"),
    "truncated_sqlite": (["hydra.sweep.dir=multirun/db"], "is not a readable SQLite database"),
    "torn_journal": (["hydra.sweep.dir=multirun/jr", "hydra.sweeper.storage=journal://multirun/jr/optuna.journal"],
                     "is torn"),
    "postgres_not_listening": ([f"hydra.sweeper.storage='postgresql://optimlab:s3cret@127.0.0.1:{free_port()}/db'"],
                               "cannot open hydra.sweeper.storage=postgresql://optimlab:***@"),
    "direction_up": (["hydra.sweeper.direction=up"], "hydra.sweeper.direction=up: must be minimize or maximize"),
    "n_trials_0": (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0: must be an integer >= 1"),
    "n_trials_negative": (["hydra.sweeper.n_trials=-3"], "hydra.sweeper.n_trials=-3: must be an integer >= 1"),
    "max_failures_negative": (["hydra.sweeper.max_failures=-1"], "hydra.sweeper.max_failures=-1: must be"),
    "storage_patience_negative": (["hydra.sweeper.storage_patience=-1"],
                                  "hydra.sweeper.storage_patience=-1.0: must be a number of seconds >= 0"),
    "momentum_with_sgd": (["optimizer=sgd", "momentum=interval(0.5,0.9)"], "never reads momentum"),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_bad_sweep_input_is_one_line_and_changes_nothing(tmp_path, case):
    make_studies(tmp_path)
    before = snapshot(tmp_path)
    overrides, expected = BAD[case]
    proc = train_cli(*sweep_args("new"), *overrides, cwd=tmp_path)
    line = one_line_error(proc)
    assert expected in line, line
    assert "s3cret" not in proc.stdout + proc.stderr
    assert snapshot(tmp_path) == before  # the studies and finished folders are as they were
    assert not (tmp_path / "multirun" / "new").exists()


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("where", ["sweep_dir", "sqlite_folder"])
def test_read_only_folders_are_one_line(tmp_path, where):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        extra = (["hydra.sweep.dir=locked/s"] if where == "sweep_dir"
                 else [f"hydra.sweeper.storage=sqlite:///{locked}/optuna.db"])  # fmt: skip
        proc = train_cli(*sweep_args("new"), *extra, cwd=tmp_path)
        assert "is not writable" in one_line_error(proc)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


@pytest.mark.slow
@pytest.mark.parametrize("limit", ["0", "null"])
def test_a_sweep_of_failing_trials_ends_with_one_line(tmp_path, limit):
    # lr=1e9 diverges at the first step: every trial fails
    proc = train_cli(*sweep_args("f", "lr=interval(1e9,1e10)", "hydra.sweeper.n_trials=2",
                                 f"hydra.sweeper.max_failures={limit}"), cwd=tmp_path, timeout=300)  # fmt: skip
    line = one_line_error(proc)
    assert "stopping the sweep" in line
    study = optuna.load_study(study_name="optimlab", storage=f"sqlite:///{tmp_path}/multirun/f/optuna.db")
    assert {t.state.name for t in study.trials} == {"FAIL"}
    assert len(study.trials) == (1 if limit == "0" else 2)  # null: n_trials failures in a row


def test_generated_overrides_stay_strings():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from optimlab.sweeping.upstream import quote

    parser = OverridesParser.create()
    for value in ["8e771234", "inf", "1e5", "nan", "a'b", "x\\y", "end\\", "/tmp/a b,c", '{"a": 1}']:
        assert parser.parse_override(f"k={quote(value)}").value() == value, value
