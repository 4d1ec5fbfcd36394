"""Parallel and multi-machine sweeps on real engines: async worker processes on one study,
PostgreSQL (a real server on loopback), JournalFileBackend, dead-worker recovery with
heartbeats, and the joblib / submitit launchers."""

from __future__ import annotations

import subprocess
import sys
import time

import optuna
import pytest
from conftest import TRAIN_PY, finish, start_python
from hydra import compose, initialize_config_dir
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from pg_fixture import postgres_url  # noqa: F401  (fixture)
from test_sweep import SWEEP_TINY, ok, sweep

from optimlab.sweeping.storage import open_storage

FAST = ["epochs=1", "lr=interval(0.01,0.1)", "hydra.sweeper.plots=false"]


def check_study(study, tmp_path, name, n):
    """Exactly n finished trials, each in its own folder, no number twice, none failed."""
    numbers = [t.number for t in study.trials if t.state.is_finished()]
    assert len(numbers) == n == len(set(numbers))
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    folders = sorted(p.name for p in (tmp_path / "multirun" / name).glob("trial_*"))
    assert folders == sorted(f"trial_{k:04d}" for k in numbers)


@pytest.mark.slow
def test_three_hosts_share_one_postgresql_study(tmp_path, postgres_url):  # noqa: F811
    # the same command started three times (as on three machines) joins one study
    args = ["-m", "hydra/sweeper=optimlab", "hydra.sweep.dir=multirun/pg",
            *SWEEP_TINY, *FAST, f"hydra.sweeper.storage='{postgres_url}'", "hydra.sweeper.study_name=pg3",
            "hydra.sweeper.n_trials=12"]  # fmt: skip
    procs = [start_python(*args, cwd=tmp_path) for _ in range(3)]
    for code, out in [finish(p, timeout=400) for p in procs]:
        assert code == 0, out[-3000:]
    study = optuna.load_study(study_name="pg3", storage=open_storage(postgres_url))
    check_study(study, tmp_path, "pg", 12)
    assert len({t.user_attrs["session"] for t in study.trials}) == 3  # all three took part


@pytest.mark.slow
def test_n_workers_on_one_journal_file(tmp_path):
    proc = sweep(tmp_path, *FAST, "hydra.sweeper.n_workers=3", "hydra.sweeper.n_trials=12", name="j", timeout=400)
    ok(proc)
    path = tmp_path / "multirun" / "j" / "optuna.journal"  # the default storage for several workers
    study = optuna.load_study(study_name="optimlab", storage=JournalStorage(JournalFileBackend(str(path))))
    check_study(study, tmp_path, "j", 12)
    assert {t.user_attrs["worker"] for t in study.trials} == {0, 1, 2}
    assert (tmp_path / "multirun" / "j" / "trials.csv").read_text().count("\n") == 13


@pytest.mark.slow
def test_free_workers_do_not_wait_for_a_slow_trial(tmp_path):
    path = tmp_path / "multirun" / "async" / "optuna.journal"
    path.parent.mkdir(parents=True)
    study = optuna.create_study(study_name="optimlab", storage=JournalStorage(JournalFileBackend(str(path))),
                                direction="maximize")  # fmt: skip
    study.enqueue_trial({"epochs": 100})  # the first trial asked for is slow (~10 s)
    for _ in range(4):
        study.enqueue_trial({"epochs": 1})
    ok(sweep(tmp_path, "epochs=choice(1,100)", "lr=0.05", "hydra.sweeper.n_workers=2", "hydra.sweeper.n_trials=5",
             "hydra.sweeper.plots=false", name="async"))  # fmt: skip
    trials = optuna.load_study(study_name="optimlab", storage=JournalStorage(JournalFileBackend(str(path)))).trials
    slow = next(t for t in trials if t.params["epochs"] == 100)
    assert slow.state.name == "COMPLETE"
    meanwhile = [t for t in trials if t is not slow and slow.datetime_start < t.datetime_start
                 and t.datetime_complete < slow.datetime_complete]  # fmt: skip
    assert len(meanwhile) >= 2, [(t.number, t.datetime_start, t.datetime_complete) for t in trials]


@pytest.mark.slow
def test_killed_worker_trial_fails_and_is_retried(tmp_path, postgres_url):  # noqa: F811
    common = [*SWEEP_TINY, "lr=interval(0.01,0.1)", "hydra.sweeper.plots=false",
              f"hydra.sweeper.storage='{postgres_url}'", "hydra.sweeper.study_name=killed", "hydra.sweeper.n_trials=3",
              "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3"]  # fmt: skip
    worker = subprocess.Popen([sys.executable, str(TRAIN_PY), "-m", "hydra/sweeper=optimlab", "hydra.sweep.dir=multirun/k", *common,
                               "epochs=500"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    metrics = tmp_path / "multirun" / "k" / "trial_0000" / "metrics.csv"
    deadline = time.time() + 180
    while not metrics.exists() and time.time() < deadline and worker.poll() is None:
        time.sleep(0.2)
    assert metrics.exists(), "the first trial never started training"
    worker.kill()  # SIGKILL mid-trial
    worker.wait()
    storage = open_storage(postgres_url)
    assert optuna.load_study(study_name="killed", storage=storage).trials[0].state.name == "RUNNING"

    # a worker started again, with fewer epochs (a change of the study's config: allowed, and recorded)
    ok(sweep(tmp_path, *common, "epochs=1", "hydra.sweeper.allow_changes=true", name="k"))
    study = optuna.load_study(study_name="killed", storage=open_storage(postgres_url))
    dead = study.trials[0]
    assert dead.state.name == "FAIL"
    assert dead.user_attrs["fail_reason"].endswith("died")  # its owner's pid is gone: no need to wait for heartbeats
    assert [t.state.name for t in study.trials].count("COMPLETE") == 3
    retried = [t for t in study.trials if t.user_attrs.get("resume_of") == dead.number]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params == dead.params


@pytest.mark.slow
def test_trial_of_a_silent_host_fails_by_heartbeat_and_continues(tmp_path, postgres_url):  # noqa: F811
    # a trial claimed by a worker on another host that stopped sending heartbeats
    storage = open_storage(postgres_url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="silent", storage=storage, direction="maximize")
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 0.1)})
    trial.set_user_attr("owner", {"host": "elsewhere", "pid": 1, "started": 0.0})
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("silent"), 0))
    time.sleep(3)  # longer than grace_period: the trial is stale before the sweep starts
    ok(sweep(tmp_path, *FAST, f"hydra.sweeper.storage='{postgres_url}'", "hydra.sweeper.study_name=silent",
             "hydra.sweeper.n_trials=1", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2", name="hb"))  # fmt: skip
    study = optuna.load_study(study_name="silent", storage=open_storage(postgres_url))
    silent, continued = study.trials
    assert silent.state.name == "FAIL" and continued.state.name == "COMPLETE"
    assert continued.user_attrs["resume_of"] == 0 and continued.params == silent.params
    rows = (tmp_path / "multirun" / "hb" / "trials.csv").read_text().splitlines()
    assert "no heartbeat from its worker (worker pid 1 on host elsewhere died)" in rows[1]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                                      ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"]],
                         ids=["joblib", "submitit_local"])  # fmt: skip
def test_launchers_run_a_sweep(tmp_path, launcher):
    # n_jobs=2: each launcher call runs two trials side by side
    ok(sweep(tmp_path, *FAST, *launcher, "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=2", name="l", timeout=400))
    study = optuna.load_study(study_name="optimlab", storage=f"sqlite:///{tmp_path}/multirun/l/optuna.db")
    check_study(study, tmp_path, "l", 2)
    assert all((tmp_path / "multirun" / "l" / f"trial_{t.number:04d}" / "summary.json").exists() for t in study.trials)


def test_slurm_launcher_config_composes():
    from conftest import CONF_DIR

    overrides = ["sweep=lr_momentum", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                 "hydra.launcher.gpus_per_node=1", "hydra.launcher.timeout_min=120", "hydra.sweeper.n_workers=4"]  # fmt: skip
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (cfg.hydra.launcher.partition, cfg.hydra.launcher.gpus_per_node) == ("gpu", 1)
    assert cfg.hydra.sweeper.n_workers == 4
