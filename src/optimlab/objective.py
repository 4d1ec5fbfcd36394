"""What "better" means for a run's objective(s): one definition for the runner's best epoch,
the report's ranking, TensorBoard's best-so-far, the sweep summary and Pareto fronts.

A run returns one objective (``objective.metric``: the best value of an epoch metric over
its epochs) or several (``objective.metrics``): each epoch metric again its best over the
epochs, each run metric one value for the whole run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from statistics import harmonic_mean
from typing import Any, TypeVar

from optimlab.engine.metrics import DIRECTIONS, EPOCH_METRICS, VAL_LOSS  # noqa: F401 - objective's words, imported from here

T = TypeVar("T")
# one value per run: seconds of all its epochs (training + validation, resumed epochs
# included), its training throughput (all images / all training time), the model's size
RUN_METRICS = {"train_seconds": "minimize", "images_per_s": "maximize", "n_parameters": "minimize"}
METRICS = {**EPOCH_METRICS, **RUN_METRICS}  # name -> the direction that makes it better


def is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def better(a: float, b: float | None, direction: str) -> bool:
    """Whether ``a`` beats ``b`` (None: nothing to beat) under ``direction``."""
    return b is None or (a > b if direction == "maximize" else a < b)


def best(items: Iterable[T], value: Callable[[T], Any], direction: str) -> T | None:
    """The item with the best finite value (the first of equals); None if none is finite."""
    found: T | None = None
    found_value = None
    for item in items:
        v = value(item)
        if is_finite(v) and better(v, found_value, direction):
            found, found_value = item, v
    return found


def best_trial(trials: Iterable[T], value: Callable[[T], Any], number: Callable[[T], Any], direction: str) -> T | None:
    """THE best trial of a sweep, for every place that names one (the sweeper's summary and
    log line, trials.csv, optimlab-report, ``optimlab.rerun <sweep folder>``): the best
    finite objective value; ties go to the earliest trial (the lowest ``number``): Optuna's
    generic ``BaseStorage.get_best_trial``, whatever the storage (its in-memory and RDB
    storages break ties by finishing or database order). ``trials``: the finished ones to
    choose from (the sweeper: its COMPLETE trials; a folder: its completed runs)."""
    return best(sorted(trials, key=number), value, direction)


def trial_order(value: Any, number: Any, direction: str) -> tuple:
    """Sort key of :func:`best_trial`'s rule: best value first, ties by trial number."""
    return (rank_key(value, direction), number)


def rank_key(value: Any, direction: str) -> float:
    """Sort key that puts the best value first and non-finite values last."""
    if not is_finite(value):
        return math.inf
    return -value if direction == "maximize" else value


# --------------------------------------------------------------------------- several objectives


def targets(objective: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The objectives a run returns, as (metrics, directions): ``objective.metrics`` and
    ``objective.directions`` (default: each metric's own direction) when ``metrics`` is set,
    else the one ``objective.metric`` / ``objective.direction`` (conf/config.yaml holds their defaults)."""
    metrics = objective.get("metrics")
    if metrics:
        directions = objective.get("directions") or [METRICS.get(str(m), "minimize") for m in metrics]
        return [str(m) for m in metrics], [str(d) for d in directions]
    return [str(objective["metric"])], [str(objective["direction"])]


def selection(objective: Mapping[str, Any]) -> tuple[str, str]:
    """The epoch metric and direction that choose a run's best epoch (whose weights it keeps
    and tests on): the first of its objectives that is an epoch metric; ``val_loss``,
    minimized, when every objective is a run metric (train_seconds, ...)."""
    for metric, direction in zip(*targets(objective)):
        if metric in EPOCH_METRICS:
            return metric, direction
    return VAL_LOSS, EPOCH_METRICS[VAL_LOSS]


def summarize(objective: Mapping[str, Any], history: Sequence[Any], n_parameters: int | None) -> dict[str, Any]:
    """summary.json's ``objective``: metric, direction, value and best epoch of the (first)
    objective; with several objectives also ``metrics``, ``directions`` and ``values``.

    ``history``: the run's epochs (objects with the metrics.csv columns as attributes)."""
    metrics, directions = targets(objective)
    values, epochs = [], []
    for metric, direction in zip(metrics, directions):
        value, epoch = _value(metric, direction, history, n_parameters)
        values.append(value)
        epochs.append(epoch)
    out = {"metric": metrics[0], "direction": directions[0], "value": values[0], "best_epoch": epochs[0]}
    if objective.get("metrics"):
        out.update(metrics=metrics, directions=directions, values=values)
    return out


def returned(summary_objective: Mapping[str, Any]) -> float | tuple[float, ...]:
    """What a run returns to Hydra (and a sweeper): its value, or the tuple of its values."""
    values = summary_objective.get("values")
    return tuple(values) if values is not None else summary_objective["value"]


def _value(metric: str, direction: str, history: Sequence[Any], n_parameters: int | None) -> tuple[float, int | None]:
    if metric in EPOCH_METRICS:
        found = best(history, lambda r: getattr(r, metric), direction)
        return (getattr(found, metric), found.epoch) if found else (math.nan, None)
    if metric == "train_seconds":
        return (sum(r.seconds for r in history) if history else math.nan), None
    if metric == "images_per_s":
        rates = [r.images_per_s for r in history if is_finite(r.images_per_s) and r.images_per_s > 0]
        return (harmonic_mean(rates) if rates else math.nan), None
    if metric == "n_parameters":
        return (float(n_parameters) if n_parameters is not None else math.nan), None
    raise ValueError(f"unknown objective metric {metric!r}; choose from {', '.join(METRICS)}")


def pareto(points: Sequence[Sequence[float] | None], directions: Sequence[str]) -> list[bool]:
    """For each point (one value per direction), whether it is Pareto-optimal: no other
    point is at least as good in every objective and better in one. Decided by Optuna
    (``Study.best_trials`` of an in-memory study); a point with a missing or non-finite
    value is never optimal."""
    import optuna

    usable = [i for i, p in enumerate(points) if p is not None and len(p) == len(directions) and all(map(is_finite, p))]
    optimal = [False] * len(points)
    if not usable:
        return optimal
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        study = optuna.create_study(directions=list(directions), storage=optuna.storages.InMemoryStorage())
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials(
        optuna.trial.create_trial(values=[float(v) for v in points[i]], user_attrs={"index": i}) for i in usable
    )
    for trial in study.best_trials:
        optimal[trial.user_attrs["index"]] = True
    return optimal


def directions(direction: Any) -> list[str]:
    """A direction setting as Optuna's strings: ``maximize``, ``[maximize, minimize]``, or
    Enum members of either (a structured sweeper config stores its ``Direction`` enum)."""
    from enum import Enum

    items = direction if isinstance(direction, Sequence) and not isinstance(direction, str) else [direction]
    return [d.name if isinstance(d, Enum) else str(d) for d in items]
