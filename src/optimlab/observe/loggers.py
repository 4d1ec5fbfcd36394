"""Experiment trackers: the ``logger`` config group (``logger=[tensorboard,mlflow]``).

Every logger is a training callback built as ``Logger(log_dir, hparams, metric, direction,
start_epoch, **its own keys)`` and gets the same things: the run's hyperparameters when it
starts, the per-epoch scalars (:data:`~optimlab.engine.training.LOGGER_TAGS`) after each
epoch, and at the end the final status and the test metrics (``on_run_end(summary)``).

A logger that fails (its package missing, its server unreachable, its disk full) never
fails the run: :class:`Guarded` logs one warning line and drops it; training and the run
folder go on as if it had never been there.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from optimlab import objective
from optimlab.engine.training import LOGGER_TAGS, EpochResult, TrainState

log = logging.getLogger(__name__)

# what every logger reports at the end, besides the per-epoch scalars
TEST_TAGS = {"acc": "test/acc", "loss": "test/loss"}


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class Guarded:
    """A logger whose failures are one warning line each and never reach the run."""

    def __init__(self, name: str, build):
        self.name, self.inner = name, None
        try:
            self.inner = build()
        except Exception as e:  # noqa: BLE001 - a tracker must never stop training
            log.warning("logger %s is off: it could not start (%s)", name, _reason(e))

    def _call(self, method: str, *args) -> None:
        if self.inner is None:
            return
        try:
            getattr(self.inner, method)(*args)
        except Exception as e:  # noqa: BLE001
            log.warning("logger %s is off from now on: %s failed (%s)", self.name, method, _reason(e))
            self.inner = None

    def on_epoch_end(self, result: EpochResult, state: TrainState) -> None:
        self._call("on_epoch_end", result, state)

    def on_run_end(self, summary: dict[str, Any]) -> None:
        self._call("on_run_end", summary)


class BestSoFar:
    """The objective's best value over the epochs so far (what a sweeper would get)."""

    def __init__(self, metric: str, direction: str):
        self.metric, self.direction, self.value = metric, direction, None

    def update(self, result: EpochResult) -> float | None:
        value = getattr(result, self.metric)
        if objective.is_finite(value) and objective.better(value, self.value, self.direction):
            self.value = value
        return self.value


def epoch_scalars(result: EpochResult) -> dict[str, float]:
    return {tag: float(getattr(result, field)) for field, tag in LOGGER_TAGS.items()}


def end_scalars(summary: dict[str, Any]) -> dict[str, float]:
    test = summary.get("test") or {}
    return {TEST_TAGS[k]: float(v) for k, v in test.items() if k in TEST_TAGS}


# --------------------------------------------------------------------------- CSV


class CSVLogger:
    """One CSV file of the run: a row per epoch (the scalars, under their tags, and the
    hyperparameters), then a last row with ``epoch=end``, the status and the test metrics.
    Rows of many runs concatenate into one long table (``run`` is the folder's name)."""

    def __init__(self, log_dir, hparams, metric, direction, start_epoch=0, filename: str = "log.csv"):
        self.path = Path(log_dir) / filename
        self.hparams = dict(hparams)
        self.run = Path(log_dir).name
        self.best = BestSoFar(metric, direction)
        self.columns = ["run", "epoch", *LOGGER_TAGS.values(), "objective", "status", *TEST_TAGS.values(),
                        *self.hparams]  # fmt: skip
        if start_epoch and self.path.exists():  # resumed: keep the rows up to the checkpoint
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r["epoch"] != "end" and int(r["epoch"]) <= start_epoch]
        else:
            rows = []
        self._write(rows, mode="w")

    def _write(self, rows: list[dict], mode: str = "a") -> None:
        with open(self.path, mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            if mode == "w":
                writer.writeheader()
            writer.writerows(rows)

    def on_epoch_end(self, result: EpochResult, state: TrainState) -> None:
        best = self.best.update(result)
        self._write([{"run": self.run, "epoch": result.epoch, **epoch_scalars(result), "objective": best,
                      "status": "running", **self.hparams}])  # fmt: skip

    def on_run_end(self, summary: dict[str, Any]) -> None:
        self._write([{"run": self.run, "epoch": "end", "objective": (summary.get("objective") or {}).get("value"),
                      "status": summary.get("status"), **end_scalars(summary), **self.hparams}])  # fmt: skip


# --------------------------------------------------------------------------- MLflow

MLFLOW_STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "preempted": "KILLED", "pruned": "KILLED"}


class MLflowLogger:
    """One MLflow run per training run, through MLflow's own client (``mlflow-skinny`` is
    enough): params = the hyperparameters, metrics per epoch (step = epoch), the test
    metrics and the objective at the end, and the status (FINISHED, FAILED, KILLED).

    ``tracking_uri``: ``sqlite:///mlflow.db`` (the local database ``mlflow ui`` reads), a
    ``file:`` folder, or a tracking server's ``http://`` address. ``experiment``: runs are
    grouped by it (a sweep's trials land together when it names the sweep).
    """

    def __init__(self, log_dir, hparams, metric, direction, start_epoch=0, tracking_uri: str = "sqlite:///mlflow.db",
                 experiment: str = "optimlab", run_name: str | None = None, tags: dict | None = None):  # fmt: skip
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(tracking_uri=str(tracking_uri))
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        run_tags = {"optimlab.run_dir": str(log_dir), **{str(k): str(v) for k, v in (tags or {}).items()}}
        self.run_id = self.client.create_run(
            experiment_id, run_name=run_name or Path(log_dir).name, tags=run_tags
        ).info.run_id
        self.client.log_batch(self.run_id, params=[Param(str(k), str(v)[:6000]) for k, v in hparams.items()])
        self.best = BestSoFar(metric, direction)

    def on_epoch_end(self, result: EpochResult, state: TrainState) -> None:
        from mlflow.entities import Metric

        now = _millis()
        values = epoch_scalars(result)
        best = self.best.update(result)
        if best is not None:
            values["objective"] = float(best)
        metrics = [Metric(k, v, now, result.epoch) for k, v in values.items() if objective.is_finite(v)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_run_end(self, summary: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step = summary.get("epochs_completed") or 0
        metrics = [Metric(k, v, _millis(), step) for k, v in end_scalars(summary).items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.client.set_tag(self.run_id, "optimlab.status", str(summary.get("status")))
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(summary.get("status"), "FAILED"))


def _millis() -> int:
    import time

    return int(time.time() * 1000)
