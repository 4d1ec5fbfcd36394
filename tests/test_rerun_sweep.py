"""``python -m optimlab.rerun <sweep folder>``: re-trains the study's best trial (the one
rule of optimlab.objective.best_trial) with its plots back on, bit-exactly: a worker of a
2-worker sweep trained with cores/2 CPU threads, and the re-run restores that count."""

from __future__ import annotations

import csv
import logging
import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY, run_in_process, train_cli

from optimlab.engine.training import TIMING_COLUMNS


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(f)]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_rerun_of_a_sweep_folder_retrains_its_best_trial_bit_exactly(tmp_path, caplog):
    proc = train_cli(
        "-m", "hydra/sweeper=optimlab", "hydra.sweep.dir=multirun/s", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_workers=2", "hydra.sweeper.plots=false", *TINY, "data.image_size=8", "data.channels=1",
        "epochs=2", "seed=1", "lr=tag(log,interval(1e-3,0.1))", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "multirun" / "s"
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = Path(results["best_run_dir"])
    assert best.name == f"trial_{results['best_trial']:04d}"
    trial = summary(best)
    assert trial["device"]["threads"] == 1  # 2 workers on 2 cores: one thread each

    caplog.set_level(logging.INFO, logger="optimlab.rerun")
    proc = run_in_process([str(sweep)], cwd=tmp_path, module="optimlab.rerun")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr + caplog.text  # (its own lines before Hydra's logging: in pytest's capture here)
    assert f"the best trial of {sweep} is {best.name}" in out and "1 CPU threads, as the original" in out, out[-3000:]
    (rerun,) = [p for p in (tmp_path / "outputs").glob("*/*") if summary(p).get("rerun_of") == str(best)]
    again = summary(rerun)
    assert metrics(rerun) == metrics(best)  # every epoch's loss, accuracy and lr, bit for bit
    assert again["objective"] == trial["objective"] and again["test"] == trial["test"]
    assert again["device"]["threads"] == trial["device"]["threads"]
    # the preset's time savers are dropped: curves and TensorBoard events are back
    assert (rerun / "curves.png").is_file() and list(rerun.rglob("events.out.tfevents.*"))
    assert not (best / "curves.png").exists()


def _trial(folder: Path, value, status="completed", **objective) -> None:
    from optimlab.run.folder import RunFolder

    RunFolder(folder).write_summary({"status": status, "objective": {
        "metric": "val_acc", "direction": "maximize", "value": value, "best_epoch": 1, **objective}})  # fmt: skip


def test_the_best_trial_of_a_sweep_folder_is_the_earliest_of_equals_among_completed_ones(tmp_path):
    from optimlab.errors import ConfigError
    from optimlab.run.rerun import best_trial_folder

    _trial(tmp_path / "trial_0010", 0.9)
    _trial(tmp_path / "trial_0002", 0.5)
    _trial(tmp_path / "trial_0009", 0.9)
    _trial(tmp_path / "trial_0001", 0.99, status="pruned")  # never the best: not completed
    assert best_trial_folder(tmp_path) == tmp_path / "trial_0009"
    with pytest.raises(ConfigError, match="has no completed trial to re-run"):
        best_trial_folder(tmp_path / "trial_0001")
    _trial(tmp_path / "pareto" / "trial_0000", 0.9, values=[0.9, 10.0])
    with pytest.raises(ConfigError, match="several objectives"):
        best_trial_folder(tmp_path / "pareto")
