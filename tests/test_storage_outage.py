"""A sweep waits out an outage of its PostgreSQL storage: a real server stopped with
`pg_ctl stop -m fast` while a trial trains (the trial paused at a known step by
tests/faults/sitecustomize.py, so the server goes down mid-trial for sure), then started
again. Past `hydra.sweeper.storage_patience` the sweep stops with one line, and the same
command continues it."""

from __future__ import annotations

import datetime
import errno
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, TINY, TRAIN_PY
from pg_fixture import pg_server  # noqa: F401  (fixture)

from optimlab.errors import StorageUnreachable
from optimlab.sweeping import outage
from optimlab.sweeping.storage import open_storage

FAULTS = str(ROOT / "tests" / "faults")
OUTAGE_S = 12  # the server stays down this long: a sweep used to die at its first failed call
START = re.compile(r"(worker \d+: )?storage postgresql://\S+ is unreachable \(")
END = re.compile(r"(worker \d+: )?storage postgresql://\S+ is reachable again after [\d.]+ s")


def _sweep(tmp_path: Path, url: str, *extra: str, pause: tuple[int, Path] | None = None) -> subprocess.Popen:
    args = [
        *TINY, "epochs=3", "checkpoint.every=1", "lr=interval(0.01,0.1)", "hydra/sweeper=optimlab",
        "hydra.sweeper.sampler.seed=0", "hydra.sweeper.plots=false", f"hydra.sweeper.storage='{url}'",
        "hydra.sweep.dir=multirun/outage", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if pause is not None:  # the trial waits in the middle of its epoch 2 until the file is gone
        trial, flag = pause
        env.update(OPTIMLAB_PAUSE_AT="2:1", OPTIMLAB_PAUSE_TRIAL=str(trial), OPTIMLAB_PAUSE_FILE=str(flag),
                   PYTHONPATH=os.pathsep.join(filter(None, [FAULTS, os.environ.get("PYTHONPATH")])))  # fmt: skip
    return subprocess.Popen([sys.executable, str(TRAIN_PY), "-m", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip


def _paused(proc: subprocess.Popen, flag: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, "the trial never reached its pause point"
        time.sleep(0.05)


def _trials(url: str) -> list:
    return optuna.load_study(study_name="optimlab", storage=open_storage(url)).trials


@pytest.mark.slow
def test_a_storage_outage_is_waited_out_and_every_trial_is_told_once(tmp_path, pg_server):  # noqa: F811
    flag = tmp_path / "paused"
    # heartbeats every second, stale after 3 s: the outage is far longer, and no trial may fail for it
    proc = _sweep(tmp_path, pg_server.url, "hydra.sweeper.n_workers=2", "hydra.sweeper.n_trials=3",
                  "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3", pause=(1, flag))  # fmt: skip
    _paused(proc, flag)  # trial 1 is inside its epoch 2
    pg_server.stop()
    down = time.time()
    flag.unlink()  # it trains on: its report of epoch 2 meets the outage
    metrics = tmp_path / "multirun" / "outage" / "trial_0001" / "metrics.csv"
    while len(metrics.read_text().splitlines()) < 4:  # the header and its 3 epochs: it trained on without the storage
        assert proc.poll() is None and time.time() - down < 120, proc.communicate()[0][-3000:]
        time.sleep(0.1)
    time.sleep(max(0.0, OUTAGE_S - (time.time() - down)))  # the outage itself, not a guess at a race
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    pg_server.start()
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-4000:]
    assert "Traceback" not in out and "Error:" not in out, out[-4000:]

    starts = [m.group(1) or "" for m in map(START.search, out.splitlines()) if m]
    ends = [m.group(1) or "" for m in map(END.search, out.splitlines()) if m]
    assert starts and sorted(starts) == sorted(set(starts)) == sorted(ends), out[-4000:]  # one of each per worker

    trials = _trials(pg_server.url)
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 3, [(t.number, t.state.name) for t in trials]
    for t in trials:  # each told once, each with its whole curve
        assert len(re.findall(rf"trial {t.number} (COMPLETE|PRUNED|FAIL)", out)) == 1, out[-4000:]
        assert sorted(t.intermediate_values) == [1, 2, 3], (t.number, t.intermediate_values)
    assert trials[1].datetime_complete - trials[1].datetime_start > datetime.timedelta(seconds=OUTAGE_S)


@pytest.mark.slow
def test_past_the_patience_the_sweep_stops_in_one_line_and_the_same_command_continues(tmp_path, pg_server):  # noqa: F811
    flag = tmp_path / "paused"
    common = ["hydra.sweeper.n_trials=2", "hydra.sweeper.storage_patience=3"]
    proc = _sweep(tmp_path, pg_server.url, *common, pause=(0, flag))
    _paused(proc, flag)  # trial 0 inside its epoch 2
    pg_server.stop()
    flag.unlink()
    out = proc.communicate(timeout=120)[0]  # the server stays down
    assert proc.returncode == 75, out[-4000:]  # EX_TEMPFAIL: run it again
    assert "Traceback" not in out, out[-4000:]
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out[-4000:]
    assert "has been unreachable for" in errors[0] and "longer than hydra.sweeper.storage_patience=3" in errors[0]
    assert "trial(s) 0 continue from their last checkpoint" in errors[0], errors[0]
    assert len([line for line in out.splitlines() if START.search(line)]) == 1, out[-4000:]

    pg_server.start()  # the same command continues trial 0 and completes the study
    proc = _sweep(tmp_path, pg_server.url, *common)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-4000:]
    trials = _trials(pg_server.url)
    states = {t.number: t.state.name for t in trials}
    assert list(states.values()).count("COMPLETE") == 2, states
    stopped = trials[0]
    assert stopped.state.name == "FAIL" and stopped.user_attrs["status"] == "storage_unreachable", stopped.user_attrs
    continued = [t for t in trials if t.user_attrs.get("resume_of") == 0]
    assert len(continued) == 1 and continued[0].state.name == "COMPLETE" and continued[0].params == stopped.params
    assert continued[0].user_attrs["deaths"] == 0  # a stop, not a death: max_retry is not spent on it
    assert "continues trial 0 from" in out, out[-4000:]


@pytest.mark.slow
def test_sigterm_while_the_storage_is_away_stops_at_once_and_the_same_command_continues(tmp_path, pg_server):  # noqa: F811
    flag = tmp_path / "paused"
    proc = _sweep(tmp_path, pg_server.url, "hydra.sweeper.n_trials=2", pause=(0, flag))
    _paused(proc, flag)
    pg_server.stop()
    flag.unlink()
    metrics = tmp_path / "multirun" / "outage" / "trial_0000" / "metrics.csv"
    while len(metrics.read_text().splitlines()) < 4:  # all 3 epochs trained: its last report waits for the storage
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.1)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143 and time.time() - sent < 60, out[-4000:]  # not the 300 s of patience
    assert "Traceback" not in out and "Error:" not in out, out[-4000:]
    assert "sweep preempted by SIGTERM" in out, out[-4000:]

    pg_server.start()
    proc = _sweep(tmp_path, pg_server.url, "hydra.sweeper.n_trials=2")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-4000:]
    trials = _trials(pg_server.url)
    assert [t.state.name for t in trials].count("COMPLETE") == 2, [(t.number, t.state.name) for t in trials]
    continued = [t for t in trials if t.user_attrs.get("resume_of") == 0]
    assert len(continued) == 1 and continued[0].state.name == "COMPLETE" and continued[0].user_attrs["deaths"] == 0

def test_only_errors_of_an_unreachable_or_busy_storage_are_waited_out(tmp_path):
    import sqlalchemy

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(sqlalchemy.exc.OperationalError) as refused:
        sqlalchemy.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/x").connect()
    assert outage.is_transient(refused.value)
    assert "Connection refused" in outage.first_line(refused.value)

    path = tmp_path / "x.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    with engine.connect() as conn:
        with pytest.raises(sqlalchemy.exc.OperationalError) as missing:
            conn.execute(sqlalchemy.text("SELECT * FROM nothing"))
    assert not outage.is_transient(missing.value)  # "no such table" does not pass by waiting
    assert outage.is_transient(OSError(errno.EIO, "Input/output error"))
    assert not outage.is_transient(OSError(errno.ENOSPC, "No space left on device"))  # a full disk has its own stop


def test_a_locked_sqlite_study_is_waited_for_with_one_line_each_way(tmp_path, caplog):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="s", storage=url)
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 0}})
    patient = outage.PatientStorage(storage, outage.Outage("optuna.db", patience=30))
    holder = sqlite3.connect(tmp_path / "optuna.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the file: "database is locked"
    release = threading.Timer(1.5, holder.execute, ["COMMIT"])
    release.start()
    with caplog.at_level(logging.INFO, logger=outage.log.name):
        started = time.monotonic()
        assert [s.study_name for s in patient.get_all_studies()] == ["s"]
    release.join()
    assert time.monotonic() - started >= 1.4
    lines = [r.getMessage() for r in caplog.records if r.name == outage.log.name]
    assert len(lines) == 2 and "is unreachable (database is locked)" in lines[0], lines
    assert "is reachable again after" in lines[1], lines

    holder.execute("BEGIN EXCLUSIVE")  # held past the patience: one error, at once once spent
    impatient = outage.PatientStorage(storage, outage.Outage("optuna.db", patience=1))
    with pytest.raises(StorageUnreachable, match="longer than hydra.sweeper.storage_patience=1"):
        impatient.get_all_studies()
    started = time.monotonic()
    with pytest.raises(StorageUnreachable):
        impatient.get_all_studies()
    assert time.monotonic() - started < 0.5
    holder.execute("COMMIT")
