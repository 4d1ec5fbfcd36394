"""A study records what defines it (the trials' config without their params, and the search
space): resuming it with another is refused in one line before any trial, unless
``hydra.sweeper.allow_changes=true`` records the change; changes that never decide a
result go on; the best command is the best trial's own. Real multiruns of train.py on
SQLite studies (and one of a plain app)."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TRAIN_PY, train_cli
from test_foreign_apps import run
from test_sweep import SWEEP_TINY

from optimlab.config import overrides as ovr
from optimlab.sweeping.definition import CHANGES, DEFINITION

APPS = Path(__file__).resolve().parent / "apps"


def args(*extra: str, epochs: int = 2, lr: str = "interval(0.02,0.1)") -> list[str]:
    """The sweep of these tests: SGD with momentum over lr, into multirun/s."""
    return ["-m", "hydra/sweeper=optimlab", "hydra.sweep.dir=multirun/s", *SWEEP_TINY, "optimizer=momentum",
            f"epochs={epochs}", f"lr={lr}", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.plots=false", *extra]  # fmt: skip


def load(root: Path) -> optuna.Study:
    return optuna.load_study(study_name="optimlab", storage=f"sqlite:///{root}/multirun/s/optuna.db")


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def error_line(proc) -> str:
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if line.startswith("Error: ")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in out, out[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Path:
    """A study of 2 finished trials (epochs=2, lr in [0.02, 0.1])."""
    root = tmp_path_factory.mktemp("first")
    ok(train_cli(*args("hydra.sweeper.n_trials=2"), cwd=root))
    return root


@pytest.fixture
def resumed(first, tmp_path) -> Path:
    """A copy of ``first``'s sweep folder and study to resume."""
    shutil.copytree(first / "multirun", tmp_path / "multirun")
    return tmp_path


def parsed(lines) -> dict:
    return {o.key_or_group: o.value() for o in ovr.parse([str(line) for line in lines])}


CHANGED = {
    "fixed_keys": (dict(epochs=1), ["optimizer=adam"], ["epochs: 2 → 1", "optimizer: momentum → adam"]),
    "search_space": (dict(lr="interval(0.05,0.5)"), [], ["search space lr: interval(0.02, 0.1) → interval(0.05, 0.5)"]),
    "new_swept_key": (dict(), ["momentum=interval(0.5,0.9)"], ["search space momentum: (none) → interval(0.5, 0.9)"]),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CHANGED))
def test_a_resume_with_another_config_is_refused_in_one_line_before_any_trial(resumed, case):
    changed, extra, words = CHANGED[case]
    line = error_line(train_cli(*args(*extra, "hydra.sweeper.n_trials=4", **changed), cwd=resumed))
    assert "(2 trial(s)) was last run with another config:" in line, line
    for phrase in words:
        assert phrase in line, line
    assert "hydra.sweeper.study_name" in line and "hydra.sweeper.allow_changes=true" in line, line
    assert len(load(resumed).trials) == 2  # no trial ran
    assert sorted(p.name for p in (resumed / "multirun" / "s").glob("trial_*")) == ["trial_0000", "trial_0001"]


@pytest.mark.slow
def test_changes_that_never_decide_a_result_go_on(resumed):
    harmless = ["hydra.sweeper.n_trials=3", "logger=csv", "plots=true", "quiet=false", "checkpoint.every=1",
                "hydra.sweeper.top_k=2"]  # fmt: skip
    ok(train_cli(*args(*harmless), cwd=resumed))
    study = load(resumed)
    assert len(study.trials) == 3 and CHANGES not in study.user_attrs


@pytest.mark.slow
def test_allow_changes_records_the_change_and_goes_on(resumed):
    changed = args("hydra.sweeper.n_trials=3", epochs=1, lr="interval(0.05,0.5)")
    proc = train_cli(*changed, "hydra.sweeper.allow_changes=true", cwd=resumed)
    ok(proc)
    assert "going on with another config" in proc.stdout + proc.stderr
    study = load(resumed)
    assert len(study.trials) == 3
    (entry,) = study.user_attrs[CHANGES]
    assert entry["trials"] == 2 and entry["at"]
    assert entry["changed"] == {"epochs": ["2", "1"], "search space lr": ["interval(0.02, 0.1)", "interval(0.05, 0.5)"]}
    assert study.user_attrs[DEFINITION]["config"]["epochs"] == 1  # the study is now of the new config
    # ... so the new command goes on without the opt-in, and the old one is refused
    ok(train_cli(*changed, "hydra.sweeper.n_trials=4", cwd=resumed))
    line = error_line(train_cli(*args("hydra.sweeper.n_trials=5"), cwd=resumed))
    assert "epochs: 1 → 2" in line and "(changed 1 time(s) before, at trial(s) 2)" in line, line
    assert len(load(resumed).trials) == 4


@pytest.mark.slow
def test_the_best_command_is_the_best_trials_own_after_a_resume_with_another_config(resumed):
    # a resume that adds trials with 1 epoch and a hopeless lr: the best trial stays one of the first sweep's
    proc = train_cli(*args("hydra.sweeper.n_trials=3", "hydra.sweeper.allow_changes=true", epochs=1,
                           lr="interval(1e-7,2e-7)"), cwd=resumed)  # fmt: skip
    ok(proc)
    study = load(resumed)
    results = yaml.safe_load((resumed / "multirun" / "s" / "optimization_results.yaml").read_text())
    best = study.best_trial
    assert best.number in (0, 1) and results["best_trial"] == best.number
    command = shlex.split(results["best_command"])
    assert command[:2] == ["python", str(TRAIN_PY)]
    own = yaml.safe_load((Path(best.user_attrs["run_dir"]) / ".hydra" / "overrides.yaml").read_text())
    assert parsed(command[2:]) == parsed(own)  # the trial's own overrides, not today's
    assert "epochs=2" in command and "epochs=1" not in command
    for t in study.trials:  # every trial recorded what it ran
        own = yaml.safe_load((Path(t.user_attrs["run_dir"]) / ".hydra" / "overrides.yaml").read_text())
        assert parsed(t.user_attrs["trial_overrides"]) == parsed(own)


@pytest.mark.slow
def test_another_apps_study_is_defined_by_its_config_too(tmp_path):
    shutil.copytree(APPS / "plain_loop", tmp_path / "app")
    app = tmp_path / "app"
    base = [sys.executable, "app.py", "-m", "hydra/sweeper=optimlab", "hydra.sweeper.direction=minimize",
            "hydra.sweeper.plots=false", "x=interval(0,4)", "hydra.sweep.dir=sw"]  # fmt: skip
    ok(run([*base, "hydra.sweeper.n_trials=2"], cwd=app))
    line = error_line(run([*base, "lr=0.9", "hydra.sweeper.n_trials=3"], cwd=app))
    assert "lr: 0.5 → 0.9" in line, line
    ok(run([*base, "hydra.sweeper.n_trials=3"], cwd=app))  # more trials of the same config
    study = optuna.load_study(study_name="optimlab", storage=f"sqlite:///{app}/sw/optuna.db")
    assert len(study.trials) == 3 and "x" not in study.user_attrs[DEFINITION]["config"]  # swept: not part of it

