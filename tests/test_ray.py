"""Sweeps on a Ray cluster (``hydra/launcher=ray``): a real two-node cluster on loopback
(``ray start --head`` and a second ``ray start --address=…`` on this machine), no mocks.

Skipped only where ray is not installed (``uv sync --extra ray``); the refusal of
``hydra/launcher=ray`` without the plugin runs everywhere."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import ROOT, finish, run_python, start_python
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from test_reliability_sweeps import metric_rows, wait_for
from test_sweep import SWEEP_TINY

FAULTS = str(ROOT / "tests" / "faults")
HAS_RAY = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="ray is not installed (uv sync --extra ray)")
RAY = str(Path(sys.executable).with_name("ray"))
CPUS_PER_NODE = 2  # a trial asks for a whole node: two trials at once run on both nodes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_start(temp_dir: str, *args: str) -> None:
    ports = {"--dashboard-agent-listen-port": free_port(), "--metrics-export-port": free_port(),
             "--runtime-env-agent-port": free_port()}  # fmt: skip
    cmd = [RAY, "start", "--node-ip-address=127.0.0.1", f"--num-cpus={CPUS_PER_NODE}", "--num-gpus=0",
           f"--temp-dir={temp_dir}", "--object-store-memory=78643200", "--disable-usage-stats",
           *(f"{k}={v}" for k, v in ports.items()), *args]  # fmt: skip
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def stop_cluster(temp_dir: str) -> None:
    """End this cluster's processes only (they all name its temp dir): ``ray stop`` would end
    every Ray instance of the machine's user."""
    procs = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
    for p in procs:
        try:
            p.kill()  # nothing of theirs to save
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node on loopback, CPUS_PER_NODE CPUs each; its address."""
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    try:
        ray_start(temp_dir, "--head", f"--port={port}", "--include-dashboard=false",
                  f"--ray-client-server-port={free_port()}")  # fmt: skip
        ray_start(temp_dir, f"--address=127.0.0.1:{port}")
        yield f"127.0.0.1:{port}"
    finally:
        stop_cluster(temp_dir)


def ray_sweep_args(name: str, address: str, *args: str) -> list[str]:
    return ["-m", "sweep=lr_momentum_fast", f"hydra.sweep.dir=multirun/{name}", *SWEEP_TINY, "hydra/launcher=ray",
            f"hydra.launcher.ray.init.address={address}", f"+hydra.launcher.ray.remote.num_cpus={CPUS_PER_NODE}",
            *args]  # fmt: skip


def journal_study(path: Path):
    return optuna.load_study(study_name="lr_momentum_fast", storage=JournalStorage(JournalFileBackend(str(path))))


def run_summary(tmp_path: Path, name: str, number: int) -> dict:
    return json.loads((tmp_path / "multirun" / name / f"trial_{number:04d}" / "summary.json").read_text())


@pytest.fixture(scope="module")
def pruned_sweep(cluster, tmp_path_factory):
    """A 6-trial pruned sweep, two workers (two trials in flight), on the two-node cluster;
    its study in the default journal file of the sweep folder (both nodes are on this machine)."""
    tmp_path = tmp_path_factory.mktemp("ray_sweep")
    done = run_python(str(ROOT / "train.py"), *ray_sweep_args("r", cluster, "epochs=2", "hydra.sweeper.n_trials=6",
                      "hydra.sweeper.n_workers=2", "hydra.sweeper.pruner.min_resource=1"),  # a rung at epoch 1 of 2
                      cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp_path, journal_study(tmp_path / "multirun" / "r" / "optuna.journal")


@needs_ray
@pytest.mark.slow
def test_a_pruned_sweep_runs_its_trials_as_ray_tasks_on_both_nodes(pruned_sweep):
    tmp_path, study = pruned_sweep
    trials = study.trials
    assert sorted({t.state.name for t in trials}) == ["COMPLETE", "PRUNED"]  # the pruner stopped some
    assert sum(t.state.is_finished() for t in trials) == 6
    # each trial's epochs reached the study from its Ray worker process: the pruner judged them
    assert all(t.intermediate_values for t in trials)
    rays = [run_summary(tmp_path, "r", t.number)["environment"]["ray"] for t in trials]
    assert all(r and r["pid"] != os.getpid() for r in rays)
    assert len({r["node_id"] for r in rays}) == 2  # two trials at once, each a whole node's CPUs
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}


@needs_ray
@pytest.mark.slow
def test_each_trial_gets_the_cpus_it_asked_for(pruned_sweep):
    tmp_path, study = pruned_sweep
    for t in study.trials:  # ray.get_runtime_context().get_assigned_resources() inside the task
        assert run_summary(tmp_path, "r", t.number)["environment"]["ray"]["assigned_resources"] == {"CPU": CPUS_PER_NODE}


@needs_ray
@pytest.mark.slow
def test_a_sigkilled_ray_worker_trial_fails_and_continues_from_its_checkpoint(cluster, tmp_path):
    pause = tmp_path / "paused.pid"
    # the Ray worker of trial 0 waits in epoch 2 (epoch 1 checkpointed), with its pid in a file
    env = {"PYTHONPATH": FAULTS, "OPTIMLAB_PAUSE_AT": "2:1", "OPTIMLAB_PAUSE_FILE": str(pause), "OPTIMLAB_PAUSE_TRIAL": "0"}
    args = ray_sweep_args("k", cluster, "epochs=2", "hydra.sweeper.n_trials=1",
                          "checkpoint.every=1", *(f"+hydra.launcher.ray.remote.runtime_env.env_vars.{k}='{v}'" for k, v in env.items()))  # fmt: skip
    proc = start_python(*args, cwd=tmp_path)
    deadline = time.time() + 180
    while not pause.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert pause.exists(), finish(proc, timeout=5)[1][-3000:]
    pid = int(pause.read_text())
    assert pid != proc.pid and psutil.Process(pid).ppid() != proc.pid  # a Ray worker, not the sweep's process
    os.kill(pid, signal.SIGKILL)
    code, out = finish(proc, timeout=240)
    assert code == 0, out[-3000:]

    study = optuna.load_study(study_name="lr_momentum_fast", storage=f"sqlite:///{tmp_path}/multirun/k/optuna.db")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]  # n_trials=1 reached
    dead = study.trials[0]
    assert dead.user_attrs["status"] == "died" and "Ray task was lost" in dead.user_attrs["fail_reason"]
    (continued,) = [t for t in study.trials if t.user_attrs.get("resume_of") == 0]
    assert continued.state.name == "COMPLETE" and continued.params == dead.params
    summary = run_summary(tmp_path, "k", continued.number)
    assert summary["resumed_from"]["epoch"] == 1
    assert summary["resumed_from"]["run_dir"] == str(tmp_path / "multirun" / "k" / "trial_0000")
    assert run_summary(tmp_path, "k", 0)["status"] == "died"


STOP_BOUND = 10.0  # seconds from the sweep's SIGTERM to its exit, its Ray tasks stopped and saved


@needs_ray
@pytest.mark.slow
def test_sigterm_stops_the_ray_tasks_as_preempted_and_the_same_command_resumes_them(cluster, tmp_path):
    # two workers, a trial each, each trial a Ray task on its own node, held before epoch 2 (epoch 1 checkpointed);
    # no rung within 2 epochs: the trial behind at epoch 1 would be pruned, not held
    args = ray_sweep_args("t", cluster, "epochs=2", "checkpoint.every=1", "hydra.sweeper.n_trials=2",
                          "hydra.sweeper.n_workers=2", "hydra.sweeper.pruner.min_resource=3")  # fmt: skip
    hang = {"PYTHONPATH": FAULTS, "OPTIMLAB_HANG_AT": "2"}
    log = open(tmp_path / "t.log", "w")  # a file, not a pipe: workers never block on output
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args,
                             *(f"+hydra.launcher.ray.remote.runtime_env.env_vars.{k}='{v}'" for k, v in hang.items())],
                            cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    proc.log_path = Path(log.name)
    root = tmp_path / "multirun" / "t"
    wait_for(lambda: sum(metric_rows(d) >= 1 for d in root.glob("trial_*")) == 2, 120, "both trials to finish epoch 1", proc)
    summaries = [json.loads((d / "summary.json").read_text()) for d in sorted(root.glob("trial_*"))]
    pids = [s["environment"]["ray"]["pid"] for s in summaries]
    assert all(psutil.Process(pid).ppid() != proc.pid for pid in pids)  # Ray workers, not the sweep's processes

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - started
    out = proc.log_path.read_text()
    assert code == 143, out[-3000:]
    assert took < STOP_BOUND, f"the sweep took {took:.1f} s to exit after its SIGTERM"
    assert "Traceback" not in out, out[-3000:]
    for folder in sorted(root.glob("trial_*")):  # each Ray task got the signal: its run saved where it was
        summary = json.loads((folder / "summary.json").read_text())
        assert (summary["status"], summary["epochs_completed"]) == ("preempted", 1), folder
    study = journal_study(root / "optuna.journal")
    assert [(t.state.name, t.user_attrs["status"]) for t in study.trials] == [("FAIL", "preempted")] * 2

    done = run_python(str(ROOT / "train.py"), *args, cwd=tmp_path, timeout=180)  # the same command again
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study = journal_study(root / "optuna.journal")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    resumed = {t.user_attrs["resume_of"]: t for t in study.trials if "resume_of" in t.user_attrs}
    assert sorted(resumed) == [0, 1]
    for number, t in resumed.items():
        assert t.params == study.trials[number].params
        summary = run_summary(tmp_path, "t", t.number)
        assert (summary["resumed_from"]["epoch"], summary["epochs_completed"]) == (1, 2)


@needs_ray
def test_a_study_file_with_a_ray_cluster_elsewhere_is_one_line(tmp_path):
    # 192.0.2.1 (TEST-NET-1) is on no machine: its Ray workers could not reach a file here
    for storage in ([], ["hydra.sweeper.storage=sqlite:///optuna.db"]):
        done = run_python(str(ROOT / "train.py"), *ray_sweep_args("far", "192.0.2.1:6379", *storage), cwd=tmp_path, timeout=120)
        assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stdout + done.stderr, done.stderr
        assert "hydra.launcher.ray.init.address=192.0.2.1:6379" in lines[0] and "postgresql://" in lines[0]
        assert not (tmp_path / "multirun").exists() and not (tmp_path / "optuna.db").exists()


def test_the_ray_launcher_without_its_plugin_says_what_to_install(tmp_path):
    env = {"PYTHONPATH": FAULTS, "OPTIMLAB_BLOCK_IMPORT": "hydra_plugins.hydra_ray_launcher"}
    done = run_python(str(ROOT / "train.py"), "-m", "hydra/launcher=ray", "lr=0.01,0.1", cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "Error: hydra/launcher=ray needs the Hydra plugin hydra-ray-launcher, which is not installed: "
        "pip install 'optimlab[ray]' (in a clone: uv sync --extra ray)"
    ]
    assert not (tmp_path / "multirun").exists()
