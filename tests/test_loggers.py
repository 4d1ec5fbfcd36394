"""The `logger` group: several trackers at once, each with the same scalars, hyperparameters,
final status and test metrics; MLflow read back from a real SQLite store through its client;
a tracker that fails is one warning line and the run goes on."""

from __future__ import annotations

import csv
import json
import logging

import pytest

from conftest import TINY, compose_config
from optimlab.engine.training import LOGGER_TAGS
from optimlab.run.runner import run

RUN = [*TINY, "epochs=2", "tensorboard=true"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_rows_per_epoch_then_the_end(tmp_path):
    cfg = compose_config([*RUN, "logger=csv", "lr=0.05"])
    run(cfg, str(tmp_path), overrides=["lr=0.05"])
    rows = read_csv(tmp_path / "log.csv")
    metrics = read_csv(tmp_path / "metrics.csv")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["epoch"] for r in rows] == ["1", "2", "end"]
    for row, m in zip(rows, metrics):
        assert float(row["train/loss"]) == pytest.approx(float(m["train_loss"]), rel=1e-5)
        assert float(row["val/acc"]) == pytest.approx(float(m["val_acc"]), rel=1e-5)
        assert row["lr"] == "0.05" and row["data"] == "synthetic"
    end = rows[-1]
    assert end["status"] == "completed"
    assert float(end["test/acc"]) == pytest.approx(summary["test"]["acc"])
    assert float(end["objective"]) == pytest.approx(summary["objective"]["value"])
    assert not list(tmp_path.glob("events.out.tfevents.*"))  # only the loggers asked for


def test_several_loggers_and_none(tmp_path):
    run(compose_config([*RUN, "logger=[tensorboard,csv]"]), str(tmp_path / "both"))
    assert (tmp_path / "both" / "log.csv").exists() and list((tmp_path / "both").glob("events.out.tfevents.*"))
    run(compose_config([*RUN, "logger=none"]), str(tmp_path / "none"))
    names = {p.name for p in (tmp_path / "none").iterdir()}
    assert "log.csv" not in names and not any(n.startswith("events.out") for n in names)
    assert json.loads((tmp_path / "none" / "summary.json").read_text())["status"] == "completed"


def test_a_failing_logger_is_one_warning_and_the_run_goes_on(tmp_path, caplog):
    bad = tmp_path / "not_a_folder"
    bad.write_text("a file where the database's folder should be")
    cfg = compose_config([*RUN, "logger=[mlflow,csv]", f"logger.mlflow.tracking_uri=sqlite:///{bad}/mlflow.db"])
    with caplog.at_level(logging.WARNING):
        run(cfg, str(tmp_path / "run"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "logger mlflow" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "could not start" in warnings[0], warnings
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    assert [r["epoch"] for r in read_csv(tmp_path / "run" / "log.csv")] == ["1", "2", "end"]  # the others go on


@pytest.mark.slow
def test_mlflow_sqlite_store_read_back_through_the_client(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = ["logger=mlflow", f"logger.mlflow.tracking_uri={uri}", "logger.mlflow.experiment=study1",
                 "lr=0.001", "optimizer=adam"]  # fmt: skip
    cfg = compose_config([*RUN, *overrides])
    run(cfg, str(tmp_path / "run"), overrides=overrides)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    metrics = read_csv(tmp_path / "run" / "metrics.csv")

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("study1")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    params = found.data.params
    assert params["lr"] == "0.001" and params["optimizer"] == "adam" and params["epochs"] == "2"
    assert found.data.tags["optimlab.status"] == "completed"
    assert found.data.tags["optimlab.run_dir"] == str(tmp_path / "run")
    for field, tag in LOGGER_TAGS.items():
        history = client.get_metric_history(found.info.run_id, tag)
        assert [m.step for m in history] == [1, 2], tag
        assert [m.value for m in history] == pytest.approx([float(r[field]) for r in metrics], rel=1e-5), tag
    assert found.data.metrics["test/acc"] == pytest.approx(summary["test"]["acc"])
    assert found.data.metrics["objective"] == pytest.approx(summary["objective"]["value"])
