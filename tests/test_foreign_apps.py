"""optimlab's sweeper outside optimlab's own train.py, on real apps in real subprocesses:

- an installed wheel in a fresh venv, training and sweeping from an empty folder;
- a plain ``@hydra.main`` script with its own loop (tests/apps/plain_loop), pruned through
  ``optimlab.sweeping.current_trial()``, resumed to ``n_trials``, with 2 async workers;
- a Lightning + Hydra project shaped like lightning-hydra-template (tests/apps/lightning_project),
  pruned by optuna-integration's ``PyTorchLightningPruningCallback`` built from its callbacks YAML.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
APPS = Path(__file__).resolve().parent / "apps"


def run(cmd: list[str], cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})  # fmt: skip


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def load(sweep_dir: Path, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name="optimlab", storage=storage or f"sqlite:///{sweep_dir}/optuna.db")


def results(sweep_dir: Path) -> dict:
    return yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())


# ---------------------------------------------------------------- the installed package


@pytest.mark.slow
def test_installed_wheel_trains_and_sweeps_from_any_folder(tmp_path):
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    ok(run([uv, "build", "--wheel", "-q", "-o", str(tmp_path / "dist")], cwd=ROOT))
    (wheel,) = (tmp_path / "dist").glob("optimlab-*.whl")
    # the same versions as this environment (uv's cache: no download), nothing else
    frozen = run([uv, "pip", "freeze", "--python", sys.executable], cwd=ROOT).stdout.splitlines()
    (tmp_path / "pins.txt").write_text("\n".join(x for x in frozen if not x.startswith("-e") and "optimlab" not in x))
    ok(run([uv, "venv", "-q", str(tmp_path / "venv"), "--python", sys.executable], cwd=tmp_path))
    python = tmp_path / "venv" / "bin" / "python"
    ok(run([uv, "pip", "install", "-q", "--python", str(python), str(wheel), "-c", str(tmp_path / "pins.txt")], cwd=tmp_path))
    site = run([str(python), "-c", "import optimlab, hydra_plugins.optimlab_sweeper as p; print(optimlab.__file__)"],
               cwd=tmp_path)  # fmt: skip
    ok(site)
    assert str(tmp_path / "venv") in site.stdout  # the installed copy, not this checkout
    # the upstream plugin (optuna<3) is not needed: optimlab installs next to Optuna 4+ alone
    assert run([str(python), "-c", "import hydra_plugins.hydra_optuna_sweeper"], cwd=tmp_path).returncode != 0

    work = tmp_path / "elsewhere"
    work.mkdir()
    tiny = ["data=synthetic", "data.train_size=128", "data.val_size=32", "data.test_size=32", "batch_size=32",
            "epochs=1", "logger=none", "quiet=true", "plots=false"]  # fmt: skip
    cfg = run([str(python), "-m", "optimlab", "--cfg", "job", *tiny], cwd=work)
    ok(cfg)
    assert yaml.safe_load(cfg.stdout)["data"]["train_size"] == 128  # the packaged conf/, composed
    train = tmp_path / "venv" / "bin" / "optimlab-train"
    ok(run([str(train), *tiny, "hydra.run.dir=one"], cwd=work))
    assert (work / "one" / "summary.json").exists() and (work / "one" / "checkpoint.pt").exists()
    # the installed console scripts use the run: optimlab-eval composes the packaged conf/ for its overrides
    evaluated = run([str(tmp_path / "venv" / "bin" / "optimlab-eval"), "one", "split=val", "device=cpu"], cwd=work)
    ok(evaluated)
    assert "val_acc" in evaluated.stdout and (work / "one" / "eval.json").exists()
    ok(run([str(train), "-m", *tiny, "lr=interval(0.001,0.1)", "hydra/sweeper=optimlab", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.plots=false", "hydra.sweep.dir=sw"], cwd=work))  # fmt: skip
    assert [t.state for t in load(work / "sw").trials] == [TrialState.COMPLETE] * 2
    assert results(work / "sw")["best_command"].startswith("optimlab-train ")


# ---------------------------------------------------------------- a plain @hydra.main app

PLAIN = ["hydra/sweeper=optimlab", "hydra.sweeper.direction=minimize", "hydra.sweeper.plots=false",
         "hydra.sweeper.sampler.seed=0", "x=interval(0,4)", "lr=interval(0.1,0.9)"]  # fmt: skip
MEDIAN = ["hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=2", "hydra.sweeper.pruner.n_warmup_steps=0"]


def plain_app(tmp_path) -> Path:
    shutil.copytree(APPS / "plain_loop", tmp_path / "app")
    return tmp_path / "app"


def floor_approach(x: float, lr: float, epochs: int) -> list[float]:
    """The app's loss after each epoch."""
    floor, loss, out = (x - 2) ** 2, 10.0, []
    for _ in range(epochs):
        loss = floor + (loss - floor) * (1 - lr)
        out.append(loss)
    return out


@pytest.mark.slow
def test_plain_app_is_pruned_through_current_trial_and_resumes_to_n_trials(tmp_path):
    app = plain_app(tmp_path)
    cmd = [sys.executable, "app.py", "-m", *PLAIN, *MEDIAN, "hydra.sweep.dir=sw"]
    ok(run([*cmd, "hydra.sweeper.n_trials=8"], cwd=app))
    first = load(app / "sw").trials
    assert len(first) == 8 and any(t.state == TrialState.PRUNED for t in first)
    for t in first:
        curve = floor_approach(t.params["x"], t.params["lr"], 6)
        reported = [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
        assert reported == pytest.approx(curve[: len(reported)])  # each epoch, as the app's loop reported it
        if t.state == TrialState.COMPLETE:
            assert len(reported) == 6 and t.value == pytest.approx(curve[-1])
        else:
            assert t.state == TrialState.PRUNED and len(reported) < 6
    res = results(app / "sw")
    assert res["best_command"].startswith("python app.py ") and f"x={res['best_params']['x']!r}" in res["best_command"]

    # the same command, a larger total: it goes on (packing needs optimlab's loop: one line, unpacked)
    more = run([*cmd, "hydra.sweeper.n_trials=10", "hydra.sweeper.pack=2"], cwd=app)
    ok(more)
    assert "hydra.sweeper.pack=2: the task is not optimlab's train.py, so its trials run one at a time" in more.stdout
    again = load(app / "sw").trials
    assert len(again) == 10 and [t.params for t in again[:8]] == [t.params for t in first]

    # outside a sweep the app runs as it always did: current_trial() is None
    single = run([sys.executable, "app.py", "x=1.0", "lr=0.5", "hydra.run.dir=one"], cwd=app)
    ok(single)


@pytest.mark.slow
def test_plain_app_with_two_async_workers(tmp_path):
    app = plain_app(tmp_path)
    ok(run([sys.executable, "app.py", "-m", *PLAIN, *MEDIAN, "hydra.sweep.dir=sw", "hydra.sweeper.n_trials=6",
            "hydra.sweeper.n_workers=2"], cwd=app))  # fmt: skip
    study = load(app / "sw", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(app / "sw" / "optuna.journal"))))  # fmt: skip
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6
    assert {t.user_attrs["worker"] for t in finished} == {0, 1}
    assert all(t.intermediate_values for t in finished)  # both workers' jobs reached their trials


# a plain app whose trial waits (until killed) once it is running, for the signal tests; the
# switch is outside its config, so the command that continues the trial is the same command
WAITING_APP = """
import os, time
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg) -> float:
    if os.environ.get("APP_WAIT"):
        open(os.path.join(HydraConfig.get().runtime.output_dir, "started"), "w").close()
        time.sleep(600)
    return (cfg.x - 2) ** 2

if __name__ == "__main__":
    main()
"""


def start_and_stop(app: Path, sig: int, *args: str) -> int:
    """Start a sweep, send ``sig`` once its first trial runs, and return its exit code."""
    proc = subprocess.Popen([sys.executable, "app.py", "-m", *args], cwd=app, env={**os.environ, "APP_WAIT": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    marker = app / "sw" / "trial_0000" / "started"
    while not marker.exists() and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(sig)
    return proc.wait(timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_plain_app_trial_stopped_or_killed_is_continued_by_the_same_command(tmp_path, sig):
    app = tmp_path / "app"
    app.mkdir()
    (app / "app.py").write_text(WAITING_APP)
    (app / "config.yaml").write_text("x: 0.0\n")
    args = ["hydra/sweeper=optimlab", "hydra.sweeper.direction=minimize", "hydra.sweeper.plots=false",
            "hydra.sweeper.sampler.seed=0", "x=interval(0,4)", "hydra.sweeper.n_trials=3", "hydra.sweep.dir=sw"]  # fmt: skip
    code = start_and_stop(app, sig, *args)
    assert code == (143 if sig == signal.SIGTERM else -signal.SIGKILL)  # SIGTERM: the sweep's own exit, for requeue
    first = load(app / "sw").trials[0]
    assert first.state == (TrialState.FAIL if sig == signal.SIGTERM else TrialState.RUNNING)
    ok(run([sys.executable, "app.py", "-m", *args], cwd=app))  # the same command (no wait): it goes on
    trials = load(app / "sw").trials
    assert trials[0].state == TrialState.FAIL  # a killed worker's trial is marked FAIL when its pid is gone
    continued = [t for t in trials if t.user_attrs.get("resume_of") == 0]
    assert len(continued) == 1 and continued[0].params == first.params and continued[0].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3


# ---------------------------------------------------------------- a Lightning + Hydra project


def write_tiny_regression(path: Path) -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 4, generator=g)
    torch.save({"x": x, "y": x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(128, generator=g)}, path)


@pytest.mark.slow
def test_lightning_project_sweeps_with_the_pruning_callback_from_its_config(tmp_path):
    pytest.importorskip("lightning")
    pytest.importorskip("optuna_integration")
    project = tmp_path / "project"
    shutil.copytree(APPS / "lightning_project", project)
    write_tiny_regression(tmp_path / "data.pt")
    env = {"TINY_DATA": str(tmp_path / "data.pt")}
    proc = run([sys.executable, "src/train.py", "-m", "hparams_search=tiny_optuna", "hydra.sweeper.plots=false",
                "hydra.sweep.dir=sw"], cwd=project, env=env)  # fmt: skip
    ok(proc)
    trials = load(project / "sw").trials
    assert len(trials) == 8
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and complete
    assert all(t.intermediate_values for t in trials)  # each validation epoch reached the study
    for t in complete:  # the value the app returned is its last reported val/loss
        assert t.value == pytest.approx(t.intermediate_values[max(t.intermediate_values)], rel=1e-6)
    for t in pruned:
        assert max(t.intermediate_values) < 5  # stopped before its last epoch (max_epochs=6)

    # the best trial's command is the project's own, and it runs as a single run
    best = results(project / "sw")["best_command"]
    assert best.startswith("python src/train.py hparams_search=tiny_optuna hydra.mode=RUN ")
    again = run([sys.executable, *shlex.split(best)[1:], "hydra.run.dir=best"], cwd=project, env=env)
    ok(again)
    assert (project / "best" / ".hydra" / "config.yaml").exists()
