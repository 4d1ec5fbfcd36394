"""What a logger is told about its run, and the small interface every logger keeps.

A logger (``logger`` config group: ``_target_`` plus its own keys) is built as
``Logger(run, **its own keys)`` with one :class:`RunContext`, and is then a training
callback: ``on_epoch_end(result, state)`` after each epoch and ``on_run_end(summary)``
once at the end (:class:`Logger`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from optimlab.engine.metrics import EpochResult

TRIAL_ENV = "OPTIMLAB_TRIAL"  # how a sweeper tells a job which trial it is (hydra.job.env_set)


@dataclass(frozen=True)
class TrialLink:
    """Which trial of which study a job is: the study's storage URL, its name, the trial's number."""

    storage: str
    study: str
    number: int

    @property
    def key(self) -> str:
        """A short key that tells two studies of the same name apart (no password in it)."""
        return hashlib.sha1(f"{self.storage}\n{self.study}".encode()).hexdigest()[:16]

    def env(self) -> dict[str, str]:
        return {TRIAL_ENV: json.dumps(asdict(self))}

    @classmethod
    def from_env(cls) -> TrialLink | None:
        raw = os.environ.get(TRIAL_ENV)
        return cls(**json.loads(raw)) if raw else None


@dataclass(frozen=True)
class RunContext:
    """One run, as its loggers see it.

    ``folder``: the run's RunFolder (a logger that writes a file of the run folder goes
    through it); ``hparams``: flat scalars; ``objectives``: [(metric, direction), ...], the
    run's objective first; ``start_epoch``: > 0 for a resumed run; ``trial``: the sweep's
    trial this run is (None for a single run), so a tracker can group a study's trials."""

    folder: Any
    hparams: dict[str, Any] = field(default_factory=dict)
    objectives: tuple[tuple[str, str], ...] = ()
    start_epoch: int = 0
    trial: TrialLink | None = None

    @property
    def log_dir(self) -> Path:
        return Path(self.folder.path)


class Logger(Protocol):
    """What the runner calls on every logger (Guarded turns its failures into one warning)."""

    def on_epoch_end(self, result: EpochResult, state: Any) -> None: ...

    def on_run_end(self, summary: dict[str, Any]) -> None: ...
