"""hydra-optuna-sweeper's features, through hydra/sweeper=optimlab: a tiny Hydra app (no
torch, tests/hydra_app.py) swept by Hydra's own main with real SQLite studies.

Already shown elsewhere: resume, pruning, grid + failures with train.py (test_sweep.py),
several directions (test_multiobjective.py), the upstream plugin itself on train.py
(test_sweep.py::test_upstream_optuna_sweeper_still_works)."""

from __future__ import annotations

import itertools
import re

import hydra_app as app
import pytest
import yaml

ONE = ["hydra.sweeper.direction=minimize", "hydra.sweeper.plots=false", "n_values=1"]


@pytest.mark.slow
def test_custom_search_space_adds_conditional_params(tmp_path):
    app.write(tmp_path, {"space.py": app.SPACE})
    app.ok(app.run(tmp_path, *ONE, "x=interval(0,4)", "hydra.sweeper.custom_search_space=space.extend",
                   "hydra.sweeper.n_trials=6"))  # fmt: skip
    study = app.study(tmp_path)
    assert len(study.trials) == 6
    for t in study.trials:
        seen = app.seen(tmp_path, t.number)
        if t.params["x"] > 2:  # the function's branch decides which param the trial has
            assert set(t.params) == {"x", "y"} and seen["y"] == t.params["y"] and seen["db"] == "mysql"
        else:
            assert set(t.params) == {"x", "db"} and seen["db"] == t.params["db"] and seen["y"] == 0
        assert t.value == pytest.approx(seen["x"] + seen["y"])
    assert {len(t.params) for t in study.trials} == {2}


LEGACY = """\
defaults:
  - config
  - override hydra/sweeper: optimlab
  - _self_
hydra:
  sweeper:
    search_space:
      x: {type: float, low: 0.5, high: 1.5}
      y: {type: categorical, choices: [3, 4]}
"""


@pytest.mark.slow
def test_deprecated_search_space_config_still_works(tmp_path):
    app.write(tmp_path, {"legacy.yaml": LEGACY})
    proc = app.run(tmp_path, "--config-name=legacy", *ONE, "hydra.sweeper.n_trials=3")
    app.ok(proc)
    assert "hydra.sweeper.search_space is deprecated; use hydra.sweeper.params" in proc.stderr
    for t in app.study(tmp_path).trials:
        assert 0.5 <= t.params["x"] <= 1.5 and t.params["y"] in (3, 4)
        assert app.seen(tmp_path, t.number)["x"] == t.params["x"]


@pytest.mark.slow
def test_grid_sampler_walks_the_grid_once(tmp_path):
    # 3 x 2 points; n_trials above that is cut to the grid's size, as upstream does
    app.ok(app.run(tmp_path, *ONE, "hydra/sweeper/sampler=grid", "x=choice(0,1,2)", "y=range(5,7)",
                   "hydra.sweeper.n_trials=10"))  # fmt: skip
    study = app.study(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    assert sorted((t.params["x"], t.params["y"]) for t in study.trials) == list(itertools.product((0, 1, 2), (5, 6)))
    results = yaml.safe_load((tmp_path / "multirun" / "s" / "optimization_results.yaml").read_text())
    assert results["best_params"] == {"x": 0, "y": 5} and results["best_value"] == 5


PARAMS = """\
defaults:
  - config
  - override hydra/sweeper: optimlab
  - _self_
hydra:
  sweeper:
    params:
      x: interval(0, 1)  # searched, from params
      db: postgres       # fixed, from params
"""


@pytest.mark.slow
def test_fixed_params_command_line_params_and_deletions(tmp_path):
    app.write(tmp_path, {"params.yaml": PARAMS})
    proc = app.run(
        tmp_path, "--config-name=params", *ONE, "hydra.sweeper.n_trials=2",
        "y=choice(7,8)",  # searched, from the command line
        "extra.a=5",      # fixed, from the command line
        "~extra.b",       # deleted
    )  # fmt: skip
    app.ok(proc)
    for t in app.study(tmp_path).trials:
        assert set(t.params) == {"x", "y"} and 0 <= t.params["x"] <= 1 and t.params["y"] in (7, 8)
        assert t.user_attrs["db"] == "postgres" and t.user_attrs["extra.a"] == "5"  # fixed params, as upstream
        seen = app.seen(tmp_path, t.number)
        assert seen["db"] == "postgres" and seen["extra"] == {"a": 5}  # extra.b is gone
        assert seen["x"] == t.params["x"] and seen["y"] == t.params["y"]
    results = yaml.safe_load((tmp_path / "multirun" / "s" / "optimization_results.yaml").read_text())
    # the single run that repeats the best trial: its params, the fixed values and the deletion
    command = results["best_command"]
    assert command.startswith("python app.py ") and "extra.a=5" in command and "~extra.b" in command
    assert "db=postgres" in command and f"x={results['best_params']['x']!r}" in command


@pytest.mark.slow
def test_n_jobs_launches_trials_in_batches(tmp_path):
    proc = app.run(tmp_path, *ONE, "x=interval(0,4)", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=5")
    app.ok(proc)
    # one launcher call per batch: 2 + 2 + 1 trials
    assert re.findall(r"Launching (\d+) jobs locally", proc.stdout + proc.stderr) == ["2", "2", "1"]
    study = app.study(tmp_path)
    assert [t.number for t in study.trials] == list(range(5))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5


@pytest.mark.slow
def test_max_failure_rate_stops_the_sweep(tmp_path):
    # upstream's default max_failure_rate=0.0: the first failure stops the sweep (optimlab's
    # default is 1.0 with max_failures=5; see the README)
    proc = app.run(tmp_path, *ONE, "x=interval(0,4)", "fail=true", "hydra.sweeper.n_trials=3",
                   "hydra.sweeper.max_failure_rate=0.0", "hydra.sweeper.max_failures=null")  # fmt: skip
    assert proc.returncode != 0
    assert "stopping the sweep: 1 of the 1 trials it finished failed" in proc.stderr
    assert "max_failure_rate=0.0" in proc.stderr and "asked to fail" in proc.stderr
    assert [t.state.name for t in app.study(tmp_path).trials] == ["FAIL"]
