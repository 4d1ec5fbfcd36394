"""optimlab's sweeper (hydra/sweeper=optimlab): real multiruns of train.py in subprocesses
on tiny synthetic data, with real SQLite studies."""

from __future__ import annotations

import csv
import json

import optuna
import pytest
import yaml
from conftest import TRAIN_PY, train_cli

# Tiny and fast: LeNet on 16×16 one-channel synthetic images, 128 training images.
SWEEP_TINY = [
    "model=lenet",
    "data=synthetic",
    "data.train_size=128",
    "data.val_size=64",
    "data.test_size=64",
    "data.image_size=16",
    "data.channels=1",
    "batch_size=32",
    "tensorboard=false",
    "quiet=true",
    "plots=false",
    "checkpoint.every=0",
]
PNG = b"\x89PNG\r\n\x1a\n"


def sweep(tmp_path, *args, name="s", timeout=300):
    """`train.py -m` with the optimlab sweeper into multirun/<name>/ (SQLite study there)."""
    return train_cli(
        "-m", "hydra/sweeper=optimlab", f"hydra.sweep.dir=multirun/{name}", *SWEEP_TINY, *args,
        cwd=tmp_path, timeout=timeout,
    )  # fmt: skip


def load(tmp_path, name="s"):
    return optuna.load_study(study_name="optimlab", storage=f"sqlite:///{tmp_path}/multirun/{name}/optuna.db")


def states(study):
    return sorted(t.state.name for t in study.trials)


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_sweep_resumes_to_n_trials_and_writes_summary(tmp_path):
    space = ["optimizer=momentum", "epochs=2", "lr=tag(log,interval(1e-3,0.3))", "momentum=interval(0.0,0.95)"]
    ok(sweep(tmp_path, *space, "hydra.sweeper.n_trials=3", "hydra.sweeper.plots=false"))
    assert len(load(tmp_path).trials) == 3
    # the same command again with n_trials=6 completes the study to 6, it does not run 6 more
    proc = sweep(tmp_path, *space, "hydra.sweeper.n_trials=6", "hydra.sweeper.sampler.seed=0")
    ok(proc)
    study = load(tmp_path)
    assert states(study) == ["COMPLETE"] * 6
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 6  # no replayed params
    root = tmp_path / "multirun" / "s"
    folders = sorted(p.name for p in root.glob("trial_*"))
    assert folders == [f"trial_{n:04d}" for n in range(6)]
    for t in study.trials:
        summary = json.loads((root / f"trial_{t.number:04d}" / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert summary["objective"]["value"] == pytest.approx(t.value)

    with open(root / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [t.number for t in study.trials]
    for r, t in zip(rows, study.trials):
        assert r["state"] == t.state.name
        assert float(r["value"]) == pytest.approx(t.value)
        assert float(r["lr"]) == pytest.approx(t.params["lr"])
        assert r["run_dir"].endswith(f"trial_{t.number:04d}")

    results = yaml.safe_load((root / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(study.best_value)
    assert results["best_params"] == pytest.approx(study.best_params)
    assert results["best_command"].startswith(f"python {TRAIN_PY} ")  # the command as the sweep was started
    assert f"lr={study.best_params['lr']!r}" in results["best_command"]
    for png in ("optimization_history.png", "lr_momentum.png", "param_importances.png"):
        assert (root / png).read_bytes()[:8] == PNG, png
    assert "Top trials" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_pruned_trials_stop_early_and_are_not_failures(tmp_path):
    # val_acc can never exceed 1.5: a threshold pruner stops every trial after its first epoch
    proc = sweep(tmp_path, "epochs=3", "lr=interval(0.01,0.1)", "hydra.sweeper.n_trials=2", "hydra.sweeper.plots=false",
                 "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.5", "hydra.sweeper.max_failures=0")  # fmt: skip
    ok(proc)
    study = load(tmp_path)
    assert states(study) == ["PRUNED", "PRUNED"]
    for t in study.trials:
        assert t.intermediate_values == {1: pytest.approx(t.intermediate_values[1])}
        folder = tmp_path / "multirun" / "s" / f"trial_{t.number:04d}"
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"] == "pruned"
        assert summary["epochs_completed"] == 1 < 3
        assert len((folder / "metrics.csv").read_text().strip().splitlines()) == 2  # header + epoch 1


@pytest.mark.slow
def test_diverged_trial_fails_and_the_sweep_goes_on_until_the_failure_limit(tmp_path):
    grid = ["hydra/sweeper/sampler=grid", "lr=choice(0.05,1e10)", "optimizer=momentum", "epochs=1",
            "hydra.sweeper.n_trials=2", "hydra.sweeper.plots=false"]  # fmt: skip
    ok(sweep(tmp_path, *grid))
    study = load(tmp_path)
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].params["lr"] == 1e10
    assert "diverged" in failed[0].user_attrs["fail_reason"]
    assert all(t.state.name == "COMPLETE" for t in study.trials if t.params["lr"] == 0.05)
    summary = json.loads((tmp_path / "multirun" / "s" / f"trial_{failed[0].number:04d}" / "summary.json").read_text())
    assert summary["status"] == "diverged"

    proc = sweep(tmp_path, *grid, "hydra.sweeper.max_failures=0", name="limit")
    assert proc.returncode != 0
    assert "stopping the sweep: 1 of the" in proc.stdout + proc.stderr
    assert "max_failures=0" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_upstream_optuna_sweeper_still_works(tmp_path):
    proc = train_cli(
        "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.direction=maximize", "hydra.sweep.dir=multirun/up", "lr=interval(0.01,0.1)",
        "epochs=1", *SWEEP_TINY, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    ok(proc)
    results = yaml.safe_load((tmp_path / "multirun" / "up" / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna" and 0.01 <= results["best_params"]["lr"] <= 0.1
    assert sorted(p.name for p in (tmp_path / "multirun" / "up").iterdir() if p.name.isdigit()) == ["0", "1"]


def test_presets_compose_with_the_optimlab_sweeper():
    from hydra import compose, initialize_config_dir

    from conftest import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="config", overrides=["sweep=lr_momentum"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptimlabSweeper")
    assert cfg.hydra.sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
    assert cfg.hydra.sweeper.params.lr.startswith("tag(log")
    assert cfg.hydra.sweeper.study_name == "lr_momentum"
    assert cfg.optimizer.momentum == cfg.momentum


def test_best_command_gives_back_each_param_as_the_trial_had_it():
    """The re-run command of a trial parses back (shell, then Hydra) to its exact params:
    group options stay bare, strings that look like numbers or keywords stay strings."""
    import shlex

    from optimlab.config import overrides as ovr
    from optimlab.sweeping.summary import best_command

    params = {"lr": 0.0123, "batch_size": 64, "optimizer": "adam", "tag": "8e771234", "flag": "true", "note": "a b"}
    command = best_command(params, ["data=digits", "lr=tag(log,interval(1e-4,0.1))"])
    argv = shlex.split(command)
    assert argv[:2] == ["python", "train.py"] and "optimizer=adam" in argv
    parsed = {o.key_or_group: o.value() for o in ovr.parse(argv[2:])}
    assert parsed == {"data": "digits", **params}
