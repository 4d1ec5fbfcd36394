"""Multi-objective sweeps through hydra/sweeper=optimlab: a tiny Hydra app that returns a
tuple, and train.py with objective.metrics; real multiruns in subprocesses, real SQLite."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import hydra_app as app
import pytest
import yaml
from conftest import TRAIN_PY, compose_config, train_cli

from optimlab import objective
from optimlab.config import validate
from optimlab.errors import ConfigError

PNG = b"\x89PNG\r\n\x1a\n"
MULTI = ["hydra.sweeper.direction=[maximize,minimize]", "x=interval(0,4)", "y=choice(0,1)"]


def dominates(a, b, directions) -> bool:
    """``a`` at least as good as ``b`` everywhere and better somewhere."""
    sign = [1 if d == "maximize" else -1 for d in directions]
    ge = all(s * x >= s * y for s, x, y in zip(sign, a, b))
    return ge and any(s * x > s * y for s, x, y in zip(sign, a, b))


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- a task returning a tuple


@pytest.mark.slow
def test_tuple_task_gives_a_pareto_study_and_resumes_to_n_trials(tmp_path):
    app.ok(app.run(tmp_path, *MULTI, "hydra.sweeper.n_trials=4"))
    study = app.study(tmp_path)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    for t in study.trials:  # every value told, in order
        assert t.values == pytest.approx(app.f(t.params["x"], t.params["y"]), rel=1e-12)
    first = {t.number: t.values for t in study.trials}

    # the same command with n_trials=6 completes the study to 6 trials in total
    app.ok(app.run(tmp_path, *MULTI, "hydra.sweeper.n_trials=6"))
    study = app.study(tmp_path)
    assert [t.number for t in study.trials] == list(range(6))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    assert {n: study.trials[n].values for n in first} == first  # finished trials are not re-run
    root = tmp_path / "multirun" / "s"
    assert sorted(p.name for p in root.glob("trial_*")) == [f"trial_{n:04d}" for n in range(6)]

    # optimization_results.yaml: the upstream plugin's `solutions`, every Pareto-optimal trial
    results = yaml.safe_load((root / "optimization_results.yaml").read_text())
    directions = ["maximize", "minimize"]
    assert results["direction"] == directions and results["trials"] == {"COMPLETE": 6}
    solutions = results["solutions"]
    front = {s["trial"] for s in solutions}
    assert front == {t.number for t in study.best_trials}
    for t in study.trials:  # the front, checked against the definition
        dominated = any(dominates(o.values, t.values, directions) for o in study.trials)
        assert (t.number in front) == (not dominated), t.number
    for s in solutions:
        t = study.trials[s["trial"]]
        assert s["params"] == pytest.approx(t.params) and s["values"] == pytest.approx(t.values)
        assert s["run_dir"].endswith(f"trial_{t.number:04d}")
        assert s["best_command"].startswith("python app.py ") and f"x={t.params['x']!r}" in s["best_command"]
    assert [s["values"][0] for s in solutions] == sorted((s["values"][0] for s in solutions), reverse=True)

    # trials.csv: one column per objective, and which trials are Pareto-optimal
    table = rows(root / "trials.csv")
    assert list(table[0])[:5] == ["number", "state", "values_0", "values_1", "pareto"]
    for r, t in zip(table, study.trials):
        assert [float(r["values_0"]), float(r["values_1"])] == pytest.approx(t.values)
        assert r["pareto"] == str(t.number in front)
    assert (root / "pareto_front.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_a_wrong_number_of_values_fails_that_trial_with_the_reason(tmp_path):
    # a grid over how many values the task returns, for two directions
    proc = app.run(tmp_path, "hydra.sweeper.direction=[maximize,minimize]", "hydra/sweeper/sampler=grid",
                   "n_values=choice(1,2,3)", "hydra.sweeper.n_trials=3", "hydra.sweeper.plots=false")  # fmt: skip
    app.ok(proc)
    study = app.study(tmp_path)
    by_n = {t.params["n_values"]: t for t in study.trials}
    assert by_n[2].state.name == "COMPLETE"
    for n in (1, 3):
        assert by_n[n].state.name == "FAIL"
        assert f"returned {n} value(s) for 2 direction(s)" in by_n[n].user_attrs["fail_reason"]
    results = yaml.safe_load((tmp_path / "multirun" / "s" / "optimization_results.yaml").read_text())
    assert results["trials"] == {"COMPLETE": 1, "FAIL": 2}
    assert [s["trial"] for s in results["solutions"]] == [by_n[2].number]


@pytest.mark.slow
def test_pruning_several_objectives_is_refused_before_any_trial(tmp_path):
    proc = app.run(tmp_path, *MULTI, "hydra/sweeper/pruner=median")
    assert proc.returncode == 2
    error = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert error == [line for line in proc.stderr.splitlines() if line.strip()][-1:]  # one line, last
    assert "hydra/sweeper/pruner=median cannot prune a sweep with 2 objectives" in error[0]
    assert "hydra/sweeper/pruner=none" in error[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "multirun").exists()  # no trial, no study, no folder


@pytest.mark.slow
def test_resuming_a_study_with_other_directions_is_refused(tmp_path):
    app.ok(app.run(tmp_path, *MULTI, "hydra.sweeper.n_trials=1", "hydra.sweeper.plots=false"))
    proc = app.run(tmp_path, "hydra.sweeper.direction=maximize", "x=interval(0,4)", "hydra.sweeper.n_trials=2")
    assert proc.returncode == 2
    assert "has direction(s) ['maximize', 'minimize'], but this sweep asks for ['maximize']" in proc.stderr
    assert len(app.study(tmp_path).trials) == 1


# --------------------------------------------------------------------------- train.py


@pytest.mark.slow
def test_train_py_sweeps_accuracy_against_training_time(tmp_path):
    from test_sweep import SWEEP_TINY

    from optimlab.report import collect

    proc = train_cli(
        "-m", "hydra/sweeper=optimlab", "hydra.sweep.dir=multirun/mo", *SWEEP_TINY, "objective.metrics=[val_acc,train_seconds]",
        "epochs=int(interval(1,2))", "lr=tag(log,interval(0.01,0.3))", "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=0", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "multirun" / "mo"
    study = app.optuna.load_study(study_name="optimlab", storage=f"sqlite:///{root}/optuna.db")
    assert study.metric_names == ["val_acc", "train_seconds"]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]  # the objectives' own directions
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for t in study.trials:
        folder = root / f"trial_{t.number:04d}"
        summary = json.loads((folder / "summary.json").read_text())
        epochs = rows(folder / "metrics.csv")
        assert len(epochs) == t.params["epochs"]
        assert summary["objective"]["metrics"] == ["val_acc", "train_seconds"]
        assert summary["objective"]["values"] == pytest.approx(t.values, rel=1e-12)
        assert t.values[0] == max(float(r["val_acc"]) for r in epochs)
        assert t.values[1] == pytest.approx(sum(float(r["seconds"]) for r in epochs), rel=1e-12)
        assert t.intermediate_values == {}  # nothing reported per epoch

    assert list(rows(root / "trials.csv")[0])[2:5] == ["values_val_acc", "values_train_seconds", "pareto"]
    results = yaml.safe_load((root / "optimization_results.yaml").read_text())
    assert results["objectives"] == ["val_acc", "train_seconds"]
    assert {s["trial"] for s in results["solutions"]} == {t.number for t in study.best_trials}
    assert all(s["best_command"].startswith(f"python {TRAIN_PY} ") for s in results["solutions"])
    assert (root / "pareto_front.png").read_bytes()[:8] == PNG

    # optimlab-report: the Pareto-optimal runs are marked and come first
    runs, _, _ = collect(root)
    front = {f"trial_{t.number:04d}" for t in study.best_trials}
    assert {r.name for r in runs if r.pareto} == front
    assert [r.pareto for r in runs] == sorted((r.pareto for r in runs), reverse=True)


@pytest.mark.slow
def test_train_py_refuses_a_pruner_or_a_direction_count_that_does_not_fit(tmp_path):
    proc = train_cli("-m", "sweep=lr_momentum", "objective.metrics=[val_acc,train_seconds]", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "hydra/sweeper/pruner=median cannot prune a sweep with 2 objectives" in proc.stderr
    proc = train_cli("-m", "sweep=lr_momentum_pareto", "hydra.sweeper.direction=maximize", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "hydra.sweeper.direction=['maximize'] has 1 direction(s) but the run returns 2 value(s)" in proc.stderr
    assert not (tmp_path / "multirun").exists()


# --------------------------------------------------------------------------- the objective keys


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["objective.metrics=[val_acc]"], "objective.metrics=['val_acc'] is not valid: must be null or two or more"),
        (["objective.metrics=[val_acc,seconds]"], "objective.metrics=['val_acc', 'seconds'] is not valid"),
        (["objective.metrics=[val_acc,val_acc]"], "objective.metrics=['val_acc', 'val_acc'] is not valid"),
        (["objective.directions=[maximize,minimize]"], "objective.directions=['maximize', 'minimize'] is not valid: needs objective.metrics"),
        (["objective.metrics=[val_acc,train_seconds]", "objective.directions=[maximize,maximize]"],
         "must be null or ['maximize', 'minimize'] for objective.metrics=['val_acc', 'train_seconds']"),
        (["objective.metrics=[val_acc,n_parameters]", "objective.directions=[maximize]"], "objective.directions=['maximize'] is not valid"),
    ],
)  # fmt: skip
def test_objective_keys_are_checked_with_one_line(overrides, words):
    with pytest.raises(ConfigError) as e:
        validate(compose_config(["data=synthetic", *overrides]))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_single_objective_keys_work_unchanged():
    cfg = compose_config(["data=synthetic", "objective.metric=val_loss", "objective.direction=minimize"])
    validate(cfg)
    assert objective.targets(cfg.objective) == (["val_loss"], ["minimize"])
    assert objective.targets(compose_config(["objective.metrics=[val_acc,images_per_s]"]).objective) == (
        ["val_acc", "images_per_s"], ["maximize", "maximize"],
    )  # fmt: skip


def test_objective_values_of_a_run():
    epoch = lambda e, acc, loss, s, ips: SimpleNamespace(epoch=e, val_acc=acc, val_loss=loss, train_loss=loss,
                                                           seconds=s, images_per_s=ips)  # noqa: E731
    history = [epoch(1, 0.5, 2.0, 1.5, 100.0), epoch(2, 0.75, 1.0, 2.5, 300.0), epoch(3, 0.625, 1.5, 2.0, 200.0)]
    goal = {"metrics": ["val_acc", "val_loss", "train_seconds", "images_per_s", "n_parameters"]}
    out = objective.summarize(goal, history, n_parameters=1234)
    assert out["metrics"] == goal["metrics"]
    assert out["directions"] == ["maximize", "minimize", "minimize", "maximize", "minimize"]
    # best over epochs; seconds summed; throughput = all images / all time (harmonic mean)
    assert out["values"] == [0.75, 1.0, 6.0, pytest.approx(3 / (1 / 100 + 1 / 300 + 1 / 200)), 1234.0]
    assert (out["metric"], out["value"], out["best_epoch"]) == ("val_acc", 0.75, 2)
    assert objective.returned(out) == tuple(out["values"])
    assert objective.returned(objective.summarize({"metric": "val_acc", "direction": "maximize"}, history, 1)) == 0.75
    assert math.isnan(objective.summarize(goal, [], None)["values"][2])


def test_pareto_front_follows_the_directions():
    points = [[0.9, 10.0], [0.8, 5.0], [0.7, 6.0], None, [0.9, 10.0], [math.nan, 1.0]]
    assert objective.pareto(points, ["maximize", "minimize"]) == [True, True, False, False, True, False]
    assert objective.pareto(points, ["minimize", "maximize"]) == [True, False, True, False, True, False]


def test_a_report_the_study_refuses_never_fails_the_trial():
    import optuna

    from optimlab.sweeping.pruning import PruningCallback

    study = optuna.create_study(directions=["maximize", "minimize"])  # Trial.report raises here
    trial = study.ask()
    callback = PruningCallback(trial, "val_acc", last_epoch=2)
    for epoch in (1, 2):  # no exception; the first refusal turns reporting off
        callback.on_epoch_end(SimpleNamespace(epoch=epoch, val_acc=0.5), None)
    assert callback.broken and study.trials[0].intermediate_values == {}
    study.tell(trial, [0.5, 1.0])
    assert study.trials[0].state.name == "COMPLETE"


def test_pareto_preset_composes():
    from hydra import compose, initialize_config_dir

    from conftest import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="config", overrides=["sweep=lr_momentum_pareto"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptimlabSweeper") and sweeper.pruner._target_ == "optuna.pruners.NopPruner"
    assert set(sweeper.params) == {"lr", "momentum", "epochs"} and sweeper.study_name == "lr_momentum_pareto"
    assert cfg.optimizer.momentum == cfg.momentum  # SGD with momentum, not plain sgd
    assert objective.targets(cfg.objective) == (["val_acc", "train_seconds"], ["maximize", "minimize"])
