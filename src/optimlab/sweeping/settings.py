"""A sweep's settings (``hydra.sweeper.*``) as one typed object, built once from the keys
Hydra passes to the sweeper plugin.

The schema and its defaults live in the plugin's config dataclass
(``hydra_plugins.optimlab_sweeper.config.OptimlabSweeperConf``): :meth:`SweepSettings.from_conf`
takes the defaults of the keys Hydra leaves out from there, and resolves the values that
follow from others (``max_failures: auto``, ``max_failure_rate: null``, ``study_name: null``,
at least one job and one worker) once, here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from omegaconf import MISSING, DictConfig

from optimlab import objective as objectives

AUTO = "auto"  # n_workers: auto (resolved by the sweeper once it knows the device)


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """``hydra.sweeper.*`` with derived values resolved; see the plugin's config for each key."""

    sampler: DictConfig
    direction: Any  # None until the sweeper's setup reads the run's own objective
    storage: str | None
    study_name: str
    n_trials: int  # capped at the grid's size once the sampler is a grid
    n_jobs: int
    max_failure_rate: float
    search_space: DictConfig | None
    custom_search_space: str | None
    params: DictConfig | None
    pruner: DictConfig | None
    n_workers: int  # "auto" until the sweeper resolves it (workers.auto_count)
    max_failures: int | None
    heartbeat_interval: int | None
    grace_period: int | None
    max_retry: int
    storage_patience: float
    assign_gpus: bool
    plots: bool
    plot_every: int
    top_k: int
    worker_index: int
    session: str | None
    pack: Any
    allow_changes: bool  # resume a study whose config or search space changed (recorded in the study)
    warm_start: str | None = None  # a new study starts with the best trials of this one (sweeping/warm_start.py)
    warm_start_k: int = 3

    @classmethod
    def from_conf(cls, conf: type, kwargs: Mapping[str, Any]) -> SweepSettings:
        """The settings of ``kwargs`` (the keys Hydra passes), with ``conf``'s defaults for the others."""
        names = {f.name for f in dataclasses.fields(cls)}
        defaults = {
            f.name: f.default for f in dataclasses.fields(conf)
            if f.name in names and f.default is not dataclasses.MISSING and f.default != MISSING
        }  # fmt: skip
        given = {**defaults, **kwargs}
        rate = given["max_failure_rate"]
        # auto: optimlab's 5 failures; with an explicit max_failure_rate only the rate, as upstream
        max_failures = (5 if rate is None else None) if given["max_failures"] == "auto" else given["max_failures"]
        return cls(**{
            **given,
            "study_name": given["study_name"] or "optimlab",
            "n_jobs": max(1, given["n_jobs"]),
            "n_workers": given["n_workers"] if given["n_workers"] == AUTO else max(1, given["n_workers"]),
            "max_failure_rate": 1.0 if rate is None else rate,
            "max_failures": max_failures,
        })  # fmt: skip

    @property
    def directions(self) -> list[str]:
        return objectives.directions(self.direction)
