"""Experiment trackers: the ``logger`` config group (``logger=[tensorboard,mlflow]``).

Every logger is a training callback built as ``Logger(run, **its own keys)`` from one
:class:`~optimlab.observe.context.RunContext` (:class:`~optimlab.observe.context.Logger`
is the interface) and gets the same things: the run's hyperparameters when it starts, the
per-epoch scalars (:data:`~optimlab.engine.metrics.LOGGER_TAGS`) and the objective(s) so far
after each epoch, and at the end the final status, the test metrics and the objective(s)
(``on_run_end(summary)``). ``run.trial`` (None for a single run) says which trial of which
study the run is, so a tracker can group a sweep's trials (an MLflow parent run, a W&B group).

A logger that fails (its package missing, its server unreachable, its disk full) never
fails the run: :class:`Guarded` logs one warning line and drops it; training and the run
folder go on as if it had never been there.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from typing import Any

from optimlab import objective
from optimlab.engine.training import LOGGER_TAGS, EpochResult, TrainState
from optimlab.observe.context import RunContext, TrialLink

log = logging.getLogger(__name__)

# trackers optimlab installs as extras (pyproject.toml): import name -> what pip installs
EXTRAS = {"mlflow": "mlflow-skinny", "wandb": "wandb"}
# what every logger reports at the end, besides the per-epoch scalars
# (summary.json's test: the figures of the weights test_on names; test_last: the last epoch's, test_on=both)
TEST_TAGS = {"acc": "test/acc", "loss": "test/loss", "epoch": "test/weights_epoch"}
TEST_LAST_TAGS = {"acc": "test_last/acc", "loss": "test_last/loss"}


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    reason = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    package = (e.name or "").split(".")[0] if isinstance(e, ModuleNotFoundError) else ""
    if package in EXTRAS:
        reason += f"; install it with uv sync --extra {package} (or pip install {EXTRAS[package]})"
    return reason


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


class Objectives:
    """The run's objective(s) as logger scalars: ``objective`` for one, ``objective/<metric>``
    for each of several (``objective.metrics``). Epoch metrics (val_acc, ...) are logged as
    their best so far after every epoch; every objective's final value at the end.

    ``objectives``: [(metric, direction), ...] (:func:`optimlab.objective.targets`)."""

    def __init__(self, objectives):
        pairs = [(str(m), str(d)) for m, d in objectives]
        several = len(pairs) > 1
        self.tags = {m: f"objective/{m}" if several else "objective" for m, _ in pairs}
        self.best = [BestSoFar(m, d) for m, d in pairs if m in objective.EPOCH_METRICS]
        self.epoch_tags = {self.tags[b.metric] for b in self.best}

    def epoch(self, result: EpochResult) -> dict[str, float]:
        out = {}
        for best in self.best:
            value = best.update(result)
            if value is not None:
                out[self.tags[best.metric]] = float(value)
        return out

    def end(self, summary: dict[str, Any]) -> dict[str, float]:
        goal = summary.get("objective") or {}
        names = goal.get("metrics") or [goal.get("metric")]
        values = goal.get("values") or [goal.get("value")]
        return {self.tags[m]: float(v) for m, v in zip(names, values) if m in self.tags and objective.is_finite(v)}


def epoch_scalars(result: EpochResult) -> dict[str, float]:
    return {tag: float(getattr(result, field)) for field, tag in LOGGER_TAGS.items()}


def end_scalars(summary: dict[str, Any]) -> dict[str, float]:
    """The test figures; ``test/weights_epoch``: the epoch whose weights they come from."""
    test, last = summary.get("test") or {}, summary.get("test_last") or {}
    found = {TEST_TAGS[k]: float(v) for k, v in test.items() if k in TEST_TAGS and objective.is_finite(v)}
    return {**found, **{TEST_LAST_TAGS[k]: float(v) for k, v in last.items() if k in TEST_LAST_TAGS}}


def test_weights(summary: dict[str, Any]) -> str | None:
    """Which weights the test figures come from (``best epoch 3``), for a tracker's tag."""
    test = summary.get("test") or {}
    return f"{test['weights']} epoch {test.get('epoch')}" if test.get("weights") else None


# --------------------------------------------------------------------------- CSV


class CSVLogger:
    """One CSV file of the run: a row per epoch (the scalars, under their tags, and the
    hyperparameters; one named like a scalar column, e.g. ``lr``, is ``hparam.lr``), then a
    last row with ``epoch=end``, the status and the test metrics.
    Rows of many runs concatenate into one long table (``run`` is the folder's name).

    The file is the run folder's (``run.folder`` names, reads and writes it; each write
    replaces the whole file atomically, so a kill mid-write leaves the previous version)."""

    def __init__(self, run: RunContext):
        self.folder = folder = run.folder
        self.run = run.log_dir.name
        self.objectives = Objectives(run.objectives)
        start_epoch = run.start_epoch
        own = ["run", "epoch", *LOGGER_TAGS.values(), *dict.fromkeys(self.objectives.tags.values()), "status",
               *TEST_TAGS.values(), *TEST_LAST_TAGS.values(), "test_weights"]  # fmt: skip
        # a hyperparameter named like a scalar (lr: the epoch's scheduled lr) is hparam.<name>: one column each
        self.hparams = {f"hparam.{k}" if k in own else k: v for k, v in run.hparams.items()}
        self.columns = list(dict.fromkeys([*own, *self.hparams]))
        old = folder.read_log_table() if start_epoch else []  # resumed: keep the rows up to the checkpoint
        self.rows = [r for r in old if r.get("epoch", "end") != "end" and int(r["epoch"]) <= start_epoch]
        self._write()

    def _write(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        self.folder.write_log_table(buf.getvalue())

    def on_epoch_end(self, result: EpochResult, state: TrainState) -> None:
        self.rows.append({"run": self.run, "epoch": result.epoch, **epoch_scalars(result),
                          **self.objectives.epoch(result), "status": "running", **self.hparams})  # fmt: skip
        self._write()

    def on_run_end(self, summary: dict[str, Any]) -> None:
        self.rows.append({"run": self.run, "epoch": "end", **self.objectives.end(summary),
                          "status": summary.get("status"), **end_scalars(summary), "test_weights": test_weights(summary),
                          **self.hparams})  # fmt: skip
        self._write()


# --------------------------------------------------------------------------- MLflow

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # tracking_uri: null and no MLFLOW_TRACKING_URI
MLFLOW_STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "preempted": "KILLED", "pruned": "KILLED"}
PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a run under its parent


class MLflowLogger:
    """One MLflow run per training run, through MLflow's own client (``mlflow-skinny`` is
    enough): params = the hyperparameters, metrics per epoch (step = epoch), the test
    metrics and the objective at the end, and the status (FINISHED, FAILED, KILLED).

    ``tracking_uri``: ``sqlite:///mlflow.db`` (the local database ``mlflow ui`` reads), a
    ``file:`` folder, or a tracking server's ``http://`` address; None (the default): MLflow's
    own ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///mlflow.db``. ``experiment``: where the
    runs go. A sweep's trials are nested runs (MLflow's ``mlflow.parentRunId`` tag) of one
    parent run per study, named after the study, which holds the study's best objective so far:
    the UI shows a sweep as one expandable row, the way MLflow's own tuning examples do.

    A ``file:`` store (or a plain path, which MLflow reads as one) is MLflow 3's legacy
    backend, refused unless ``MLFLOW_ALLOW_FILE_STORE`` is set: naming one in
    ``tracking_uri`` or ``MLFLOW_TRACKING_URI`` sets it for the run.

    ``http_retries`` / ``http_timeout``: how long an ``http://`` server may keep a run waiting
    (MLflow's own default retries for minutes); ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and
    ``MLFLOW_HTTP_REQUEST_TIMEOUT`` in the environment win over them.
    """

    def __init__(self, run: RunContext, tracking_uri: str | None = None,
                 experiment: str = "optimlab", run_name: str | None = None, tags: dict | None = None,
                 http_retries: int = 2, http_timeout: float = 10):  # fmt: skip
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(int(http_retries)))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(http_timeout)))
        # a file: URI or a plain path (MLflow reads both as its file store) is asking for one
        is_file_store = str(tracking_uri).startswith("file:") or "://" not in str(tracking_uri)
        if is_file_store and "MLFLOW_ALLOW_FILE_STORE" not in os.environ:
            # MLflow 3.x refuses its file store unless asked to
            log.info("logger mlflow: MLflow keeps its file store in maintenance mode (a sqlite:/// store is its "
                     "recommended local one); set MLFLOW_ALLOW_FILE_STORE=true for mlflow ui on %s too", tracking_uri)
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(tracking_uri=str(tracking_uri))
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self._create_experiment(experiment)
        run_tags = {"optimlab.run_dir": str(run.log_dir), **{str(k): str(v) for k, v in (tags or {}).items()}}
        self.trial, self.parent_id = run.trial, None
        if run.trial is not None:
            self.parent_id = self._study_run(run.trial)
            run_tags.update({PARENT_RUN_ID: self.parent_id, "optimlab.study": run.trial.study,
                             "optimlab.trial": str(run.trial.number)})  # fmt: skip
        self.run_id = self.client.create_run(
            self.experiment_id, run_name=run_name or run.log_dir.name, tags=run_tags
        ).info.run_id
        self.client.log_batch(self.run_id, params=[Param(str(k), str(v)[:6000]) for k, v in run.hparams.items()])
        self.objectives = Objectives(run.objectives)
        self.direction = run.objectives[0][1]

    def _create_experiment(self, name: str) -> str:
        try:
            return self.client.create_experiment(name)
        except Exception:  # noqa: BLE001 - another trial created it in the meantime
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _study_run(self, sweep: TrialLink) -> str:
        """The study's parent run: found by its key, else created. Trials may start at once:
        each one that finds none creates one, then all agree on the oldest and the others
        are deleted, so a study has one parent run whatever the race."""
        query = f"tags.`optimlab.study_key` = '{sweep.key}'"
        if not self.client.search_runs([self.experiment_id], query, max_results=1):
            self.client.create_run(self.experiment_id, run_name=sweep.study, tags={
                "optimlab.study": sweep.study, "optimlab.study_key": sweep.key, "optimlab.role": "study"})  # fmt: skip
        found = sorted(self.client.search_runs([self.experiment_id], query, max_results=50),
                       key=lambda r: (r.info.start_time, r.info.run_id))  # fmt: skip
        for extra in found[1:]:
            try:
                self.client.delete_run(extra.info.run_id)
            except Exception:  # noqa: BLE001 - the other trial deleted it already
                pass
        parent = found[0].info.run_id
        if found[0].info.status != "RUNNING":
            self.client.update_run(parent, status="RUNNING")
        return parent

    def on_epoch_end(self, result: EpochResult, state: TrainState) -> None:
        from mlflow.entities import Metric

        now = _millis()
        values = {**epoch_scalars(result), **self.objectives.epoch(result)}
        metrics = [Metric(k, v, now, result.epoch) for k, v in values.items() if objective.is_finite(v)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def on_run_end(self, summary: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step = summary.get("epochs_completed") or 0
        values = {**end_scalars(summary), **self.objectives.end(summary)}
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, _millis(), step) for k, v in values.items()])
        self.client.set_tag(self.run_id, "optimlab.status", str(summary.get("status")))
        if test_weights(summary):
            self.client.set_tag(self.run_id, "optimlab.test_weights", test_weights(summary))
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(summary.get("status"), "FAILED"))
        if self.parent_id is not None:
            self._end_trial(values)

    def _end_trial(self, values: dict[str, float]) -> None:
        """The parent run after each trial: the study's best objective so far (step = trial
        number) and FINISHED until the next trial starts."""
        from mlflow.entities import Metric

        mine = {k: v for k, v in values.items() if k.startswith("objective")}
        parent = self.client.get_run(self.parent_id).data.metrics
        best = {}
        for tag, value in mine.items():
            old = parent.get(f"best_{tag}")
            direction = self.direction if tag == "objective" else objective.METRICS.get(tag.split("/", 1)[-1], "minimize")
            best[f"best_{tag}"] = value if old is None or objective.better(value, old, direction) else old
        now = _millis()
        self.client.log_batch(self.parent_id, metrics=[Metric(k, v, now, self.trial.number) for k, v in best.items()])
        self.client.set_terminated(self.parent_id, "FINISHED")


def _millis() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- Weights & Biases


class WandbLogger:
    """One W&B run per training run: ``config`` = the hyperparameters, a step per epoch, and
    in the run's summary the status, the test metrics and the objective(s); a failed run ends
    with exit code 1. Runs are named after their folder; a sweep's trials (``trial_NNNN``)
    share a W&B ``group`` (the study's name) and have ``job_type=trial``.

    ``mode: offline`` (the default) needs no account: the run is written under
    ``<run folder>/wandb/offline-run-*`` and ``wandb sync <that folder>`` uploads it later.
    W&B's own environment variables (``WANDB_MODE``, ``WANDB_PROJECT``, ``WANDB_DIR``,
    ``WANDB_ENTITY``, ...) are honoured where the config leaves a key null (its default); a
    key set in the config wins. ``dir`` null and no ``WANDB_DIR``: the run folder.
    """

    def __init__(self, run: RunContext, project: str | None = None, entity: str | None = None,
                 mode: str | None = None, group: str | None = None, job_type: str | None = None,
                 name: str | None = None, tags: list | None = None, dir: str | None = None):  # fmt: skip
        import wandb

        self.wandb = wandb
        trial = run.trial
        env = os.environ
        self.run = wandb.init(
            project=project or env.get("WANDB_PROJECT") or "optimlab", entity=entity,
            mode=mode or env.get("WANDB_MODE") or "offline", dir=str(dir or env.get("WANDB_DIR") or run.log_dir),
            config=dict(run.hparams),
            group=group or (trial.study if trial else None), job_type=job_type or ("trial" if trial else "train"),
            name=name or run.log_dir.name, tags=[str(t) for t in tags or []],
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True,
                                    save_code=False, init_timeout=30),  # fmt: skip
        )  # fmt: skip
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")
        self.objectives = Objectives(run.objectives)

    def on_epoch_end(self, result: EpochResult, state: TrainState) -> None:
        self.run.log({"epoch": result.epoch, **epoch_scalars(result), **self.objectives.epoch(result)})

    def on_run_end(self, summary: dict[str, Any]) -> None:
        status = summary.get("status")
        self.run.summary.update({"status": status, "epochs_completed": summary.get("epochs_completed"),
                                 **end_scalars(summary), **self.objectives.end(summary)})  # fmt: skip
        if test_weights(summary):
            self.run.summary["test_weights"] = test_weights(summary)
        self.run.finish(exit_code=0 if status == "completed" else 1)
