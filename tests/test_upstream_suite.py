"""The upstream hydra-optuna-sweeper plugin's own test suite (facebookresearch/hydra,
``plugins/hydra_optuna_sweeper/tests/test_optuna_sweeper_plugin.py``), asked of
``hydra/sweeper=optimlab``. The tests are written anew here; each is named after the upstream
test whose behaviour it checks. The example apps the upstream tests run (sphere,
multi-objective, custom search space, the grid config) have small torch-free counterparts
below, written into the test's folder and swept by Hydra's own main (in the test's process).

Upstream test                                   Here
---------------------------------------------   ------------------------------------------------
test_discovery                                  test_discovery
test_create_optuna_distribution_from_config     test_create_optuna_distribution_from_config
                                                (optimlab.sweeping.upstream.distribution_from_config)
test_create_optuna_distribution_from_override   test_create_optuna_distribution_from_override
                                                (upstream.distribution_from_override)
test_create_params_from_overrides               test_create_params_from_overrides
                                                (upstream.params_from_overrides)
test_launch_jobs                                test_launch_jobs (in-process, Hydra's sweep runner)
test_optuna_example                             test_optuna_example
test_example_with_grid_sampler                  test_example_with_grid_sampler
test_optuna_multi_objective_example             test_optuna_multi_objective_example
test_optuna_custom_search_space_example         test_optuna_custom_search_space_example
test_warnings                                   skipped: it calls a private method of the upstream
                                                sweeper (``_process_searchspace_config``). The
                                                deprecation warning it checks is shown through the
                                                command line by test_upstream_parity.py::
                                                test_deprecated_search_space_config_still_works.
test_failure_rate                               test_failure_rate

The upstream distributions are today's Optuna classes here: IntUniformDistribution(a, b) is
IntDistribution(a, b), IntLogUniformDistribution is IntDistribution(log=True),
UniformDistribution is FloatDistribution, LogUniformDistribution is FloatDistribution(log=True),
DiscreteUniformDistribution(a, b, q) is FloatDistribution(a, b, step=q).

Where optimlab differs on purpose, the test says so next to the assert:
optimization_results.yaml names its writer ``name: optimlab`` (upstream: ``optuna``); a sweep
whose failures stop it (or, with max_failure_rate=1.0, one that only fails) exits non-zero.
Upstream's multi-objective test compares the solutions' dicts (so never finds a dominated
one); here their ``values`` are compared.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import hydra_app as app
from conftest import run_in_process
import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.optimlab_sweeper.optimlab_sweeper import OptimlabSweeper
from optimlab.sweeping import upstream

# ---------------------------------------------------------------- the example apps

SPHERE = '''
import hydra

@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def sphere(cfg):
    if cfg.get("error", False):
        raise RuntimeError("cfg.error is True")
    return cfg.x ** 2 + cfg.y ** 2

if __name__ == "__main__":
    sphere()
'''

SPHERE_CONFIG = """\
defaults:
  - override hydra/sweeper: optimlab
  - override hydra/sweeper/sampler: grid
  - _self_
hydra:
  sweeper:
    direction: minimize
    study_name: sphere
    n_trials: 20
    n_jobs: 1
    params:
      x: range(-5.5, 5.5, step=0.5)
      y: choice(-5, 0, 5)
x: 1
y: 1
z: 1
error: false
"""

# upstream's tests/conf/test_grid.yaml: a grid of 2 x 2 x 2 points, one of them strings
GRID_CONFIG = """\
defaults:
  - override hydra/sweeper: optimlab
  - override hydra/sweeper/sampler: grid
  - _self_
hydra:
  sweeper:
    direction: minimize
    study_name: sphere
    n_trials: 20
    params:
      x: choice(-1, 1)
      y: range(-1.0, 1.0, step=1)
      z: choice("foo", "bar")
x: 1
y: 1
z: foo
"""

BINH_AND_KORN = '''
import hydra

@hydra.main(version_base="1.3", config_path="mo_conf", config_name="config")
def binh_and_korn(cfg):
    return 4 * cfg.x ** 2 + 4 * cfg.y ** 2, (cfg.x - 5) ** 2 + (cfg.y - 5) ** 2

if __name__ == "__main__":
    binh_and_korn()
'''

MO_CONFIG = """\
defaults:
  - override hydra/sweeper: optimlab
  - override hydra/sweeper/sampler: nsgaii
  - _self_
hydra:
  sweeper:
    sampler:
      seed: 123
    direction: [minimize, minimize]
    study_name: multi-objective
    n_trials: 20
    params:
      x: range(0, 5, step=0.5)
      y: range(0, 3, step=0.5)
x: 1
y: 1
"""

# the app and its custom_search_space function in one importable module (upstream's file name
# has dashes and its config a relative dotpath; Hydra's _locate accepts neither)
CUSTOM_SPACE = '''
import hydra

@hydra.main(version_base="1.3", config_path="custom_conf", config_name="config")
def multi_dimensional_sphere(cfg):
    return cfg.w ** 2 + cfg.x ** 2 + cfg.y ** 2 + cfg.z ** 2

def configure(cfg, trial):
    x = trial.params["x"]
    trial.suggest_float("z", x - cfg.max_z_difference_from_x, x + cfg.max_z_difference_from_x)
    trial.suggest_float("+w", 0.0, 1.0)  # w is not in the config: its override appends it

if __name__ == "__main__":
    multi_dimensional_sphere()
'''

CUSTOM_CONFIG = """\
defaults:
  - override hydra/sweeper: optimlab
  - _self_
hydra:
  sweeper:
    sampler:
      seed: 123
    direction: minimize
    study_name: custom-search-space
    n_trials: 20
    n_jobs: 1
    params:
      x: range(-5.5, 5.5, 0.5)
      y: choice(-5, 0, 5)
    custom_search_space: custom_space.configure
x: 1
y: 1
z: 100
max_z_difference_from_x: 0.5
"""

FILES = {
    "sphere.py": {"sphere.py": SPHERE, "conf/config.yaml": SPHERE_CONFIG, "grid_conf/test_grid.yaml": GRID_CONFIG},
    "multi_objective.py": {"multi_objective.py": BINH_AND_KORN, "mo_conf/config.yaml": MO_CONFIG},
    "custom_space.py": {"custom_space.py": CUSTOM_SPACE, "custom_conf/config.yaml": CUSTOM_CONFIG},
}


def sweep(folder: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """``python <script> -m hydra/sweeper=optimlab hydra.sweep.dir=<folder>/sweep <args>`` in ``folder``."""
    for name, text in FILES[script].items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    flags = [a for a in args if a.startswith("--")]
    overrides = [a for a in args if not a.startswith("--")]
    args = [*flags, "--multirun", "hydra/sweeper=optimlab", f"hydra.sweep.dir={folder / 'sweep'}",
            "hydra.sweeper.plots=false", *overrides]  # fmt: skip
    return run_in_process(args, cwd=folder, script=script)


def results(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "sweep" / "optimization_results.yaml").read_text())


def study_in(folder: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/sweep/optuna.db")


# ---------------------------------------------------------------- the plugin and the parser


def test_discovery():
    assert OptimlabSweeper.__name__ in [x.__name__ for x in Plugins.instance().discover(Sweeper)]


@pytest.mark.parametrize(
    "cfg, expected",
    [
        ({"type": "categorical", "choices": [1, 2, 3]}, CategoricalDistribution([1, 2, 3])),
        ({"type": "int", "low": 0, "high": 10}, IntDistribution(0, 10)),
        ({"type": "int", "low": 0, "high": 10, "step": 2}, IntDistribution(0, 10, step=2)),
        ({"type": "int", "low": 0, "high": 5}, IntDistribution(0, 5)),
        ({"type": "int", "low": 1, "high": 100, "log": True}, IntDistribution(1, 100, log=True)),
        ({"type": "float", "low": 0, "high": 1}, FloatDistribution(0, 1)),
        ({"type": "float", "low": 0, "high": 10, "step": 2}, FloatDistribution(0, 10, step=2)),
        ({"type": "float", "low": 1, "high": 100, "log": True}, FloatDistribution(1, 100, log=True)),
    ],
)
def test_create_optuna_distribution_from_config(cfg, expected):
    assert upstream.distribution_from_config(cfg) == expected


@pytest.mark.parametrize(
    "line, expected",
    [
        ("key=choice(1,2)", CategoricalDistribution([1, 2])),
        ("key=choice(true, false)", CategoricalDistribution([True, False])),
        ("key=choice('hello', 'world')", CategoricalDistribution(["hello", "world"])),
        ("key=shuffle(range(1,3))", CategoricalDistribution([1, 2])),
        ("key=range(1,3)", IntDistribution(1, 3)),
        ("key=interval(1, 5)", FloatDistribution(1, 5)),
        ("key=int(interval(1, 5))", IntDistribution(1, 5)),
        ("key=tag(log, interval(1, 5))", FloatDistribution(1, 5, log=True)),
        ("key=tag(log, int(interval(1, 5)))", IntDistribution(1, 5, log=True)),
        ("key=range(0.5, 5.5, step=1)", FloatDistribution(0.5, 5.5, step=1)),
    ],
)
def test_create_optuna_distribution_from_override(line, expected):
    actual = upstream.distribution_from_override(OverridesParser.create().parse_overrides([line])[0])
    if "shuffle" in line:  # shuffle() puts the choices in a random order
        assert isinstance(actual, CategoricalDistribution) and sorted(actual.choices) == sorted(expected.choices)
    else:
        assert actual == expected


@pytest.mark.parametrize(
    "lines, expected",
    [
        (["key=choice(1,2)"], ({"key": CategoricalDistribution([1, 2])}, {})),
        (["key=5"], ({}, {"key": "5"})),
        (["key1=choice(1,2)", "key2=5"], ({"key1": CategoricalDistribution([1, 2])}, {"key2": "5"})),
        (
            ["key1=choice(1,2)", "key2=5", "key3=range(1,3)"],
            ({"key1": CategoricalDistribution([1, 2]), "key3": IntDistribution(1, 3)}, {"key2": "5"}),
        ),
    ],
)
def test_create_params_from_overrides(lines, expected):
    assert upstream.params_from_overrides(lines) == expected


def test_launch_jobs(hydra_sweep_runner):
    # Hydra's own sweep runner, in this process, on Hydra's test module (no search space)
    sweep = hydra_sweep_runner(
        calling_file=None,
        calling_module="hydra.test_utils.a_module",
        config_path="configs",
        config_name="compose.yaml",
        task_function=None,
        overrides=["hydra/sweeper=optimlab", "hydra/launcher=basic", "hydra.sweeper.n_trials=8",
                   "hydra.sweeper.n_jobs=3", "hydra.sweeper.plots=false",
                   "hydra.job.chdir=False"],  # fmt: skip  (chdir: this process's cwd stays; no warning)
    )
    with sweep:
        assert sweep.returns is None
        trials = optuna.load_study(study_name="optimlab", storage=f"sqlite:///{sweep.temp_dir}/optuna.db").trials
        # the runner's task returns 100 for every job
        assert [(t.state, t.value) for t in trials] == [(TrialState.COMPLETE, 100.0)] * 8


# ---------------------------------------------------------------- the example apps, swept


@pytest.mark.slow
@pytest.mark.parametrize("with_commandline", (True, False))
def test_optuna_example(with_commandline, tmp_path):
    storage = f"sqlite:///{tmp_path}/test.db"
    # the TPE threshold below needs upstream's 20 trials; the command-line space (3 points) fewer
    n_trials = 8 if with_commandline else 20
    args = ["hydra.job.chdir=True", f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.n_jobs=1",
            f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=test-optuna-example",
            "hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.seed=123", "~z"]  # fmt: skip
    if with_commandline:
        args += ["x=choice(0, 1, 2)", "y=0"]  # y: fixed, replacing the config's choice(-5, 0, 5)
    app.ok(sweep(tmp_path, "sphere.py", *args))
    returns = results(tmp_path)
    study = optuna.load_study(storage=storage, study_name="test-optuna-example")
    best = study.best_trial
    assert returns["name"] == "optimlab"  # upstream writes name: optuna
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * n_trials
    assert returns["best_params"]["x"] == best.params["x"]
    if with_commandline:
        assert "y" not in returns["best_params"] and "y" not in best.params
        assert {t.params["x"] for t in study.trials} <= {0, 1, 2}
    else:
        assert returns["best_params"]["y"] == best.params["y"]
    assert returns["best_value"] == best.value == min(t.value for t in study.trials)
    # upstream's bound: the 95th percentile of TPE's best value after 20 trials over 1000 seeds
    assert returns["best_value"] <= 2.27


@pytest.mark.slow
@pytest.mark.parametrize("num_trials", (10, 1))
def test_example_with_grid_sampler(tmp_path, num_trials):
    proc = sweep(tmp_path, "sphere.py", "--config-dir=grid_conf", "--config-name=test_grid", "hydra.job.chdir=False",
                 f"hydra.sweeper.n_trials={num_trials}", "hydra.sweeper.n_jobs=1",
                 f"hydra.sweeper.storage=sqlite:///{tmp_path}/test.db", "hydra.sweeper.study_name=test-grid-sampler")  # fmt: skip
    app.ok(proc)
    returns = results(tmp_path)
    bv, bx, by, bz = returns["best_value"], *(returns["best_params"][k] for k in "xyz")
    assert bx in (-1, 1) and by in (-1, 0) and bz in ("foo", "bar")
    assert bv == bx**2 + by**2
    trials = optuna.load_study(storage=f"sqlite:///{tmp_path}/test.db", study_name="test-grid-sampler").trials
    points = {(t.params["x"], t.params["y"], t.params["z"]) for t in trials}
    assert len(trials) == len(points) == min(num_trials, 8)  # n_trials above the grid's 8 points: cut to 8
    if num_trials >= 8:  # the whole grid was walked: the best point is in it
        assert bv == 1 and abs(bx) == 1 and by == 0


def dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


@pytest.mark.slow
@pytest.mark.parametrize("with_commandline", (True, False))
def test_optuna_multi_objective_example(with_commandline, tmp_path):
    args = ["hydra.job.chdir=True", "hydra.sweeper.n_trials=8", "hydra.sweeper.n_jobs=1",
            "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123"]  # fmt: skip
    if with_commandline:
        args += ["x=range(0, 5)", "y=range(0, 3)"]  # integers, replacing the config's steps of 0.5
    app.ok(sweep(tmp_path, "multi_objective.py", *args))
    returns = results(tmp_path)
    assert returns["name"] == "optimlab"  # upstream writes name: optuna
    solutions = returns["solutions"]
    assert solutions
    for a in solutions:
        fractions = {0} if with_commandline else {0, 0.5}
        assert a["params"]["x"] % 1 in fractions and a["params"]["y"] % 1 in fractions
        x, y = a["params"]["x"], a["params"]["y"]
        assert a["values"] == pytest.approx([4 * x**2 + 4 * y**2, (x - 5) ** 2 + (y - 5) ** 2])
        for b in solutions:
            assert not dominates(a["values"], b["values"])
    # they are the whole Pareto front of the study: every other trial is dominated by one of them
    trials = study_in(tmp_path, "multi-objective").trials
    assert {s["trial"] for s in solutions} == {t.number for t in study_in(tmp_path, "multi-objective").best_trials}
    for t in trials:
        if t.number not in {s["trial"] for s in solutions}:
            assert any(dominates(s["values"], t.values) for s in solutions)


@pytest.mark.slow
def test_optuna_custom_search_space_example(tmp_path):
    max_z_difference_from_x = 0.3  # the command line's, not the config's 0.5, reaches the function
    app.ok(sweep(tmp_path, "custom_space.py", "hydra.job.chdir=True", "hydra.sweeper.n_trials=5",
                 "hydra.sweeper.n_jobs=1", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123",
                 f"max_z_difference_from_x={max_z_difference_from_x}"))  # fmt: skip
    returns = results(tmp_path)
    assert returns["name"] == "optimlab"  # upstream writes name: optuna
    best = returns["best_params"]
    assert abs(best["x"] - best["z"]) <= max_z_difference_from_x
    assert 0 <= best["+w"] <= 1
    trials = study_in(tmp_path, "custom-search-space").trials
    assert len(trials) == 5
    for t in trials:
        p = t.params
        assert set(p) == {"x", "y", "z", "+w"}
        assert abs(p["x"] - p["z"]) <= max_z_difference_from_x and 0 <= p["+w"] <= 1
        # the job ran with the sampled z and w (not the config's z=100)
        assert t.value == pytest.approx(p["+w"] ** 2 + p["x"] ** 2 + p["y"] ** 2 + p["z"] ** 2)


@pytest.mark.slow
@pytest.mark.parametrize("max_failure_rate", (0.5, 1.0))
def test_failure_rate(max_failure_rate, tmp_path):
    # upstream: 20 trials; 6 (three batches of n_jobs=2) show the same
    proc = sweep(tmp_path, "sphere.py", "hydra.job.chdir=True", "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2",
                 "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123",
                 f"hydra.sweeper.max_failure_rate={max_failure_rate}", "error=true")  # fmt: skip
    error_string = "RuntimeError: cfg.error is True"
    states = [t.state for t in study_in(tmp_path, "sphere").trials]
    assert proc.returncode != 0  # optimlab: the sweep ends with an error either way (upstream: not asserted)
    if max_failure_rate < 1.0:
        assert error_string in proc.stderr
        assert states == [TrialState.FAIL] * 2  # the first batch's 2 of 2 failed: > 0.5, stopped
    else:
        # failures never stop it: a failed trial does not count towards n_trials, so it ends after
        # n_trials failures in a row, with a line that does not repeat the trials' error
        assert error_string not in proc.stderr
        assert "its last 6 trials failed in a row" in proc.stderr
        assert states == [TrialState.FAIL] * 6
