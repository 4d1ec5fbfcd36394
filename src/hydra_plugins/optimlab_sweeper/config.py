"""Config schema of ``hydra/sweeper=optimlab``: hydra-optuna-sweeper's keys plus pruning,
async workers, failure limits and heartbeats. Registered in Hydra's ConfigStore."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from optimlab.config.sweeps import OPTIMLAB_SWEEPER
from hydra_plugins.optimlab_sweeper import samplers  # noqa: F401  (registers hydra/sweeper/sampler=…)


@dataclass
class PrunerConfig:
    _target_: str = MISSING


@dataclass
class NopPrunerConfig(PrunerConfig):
    """No pruning (every trial runs all its epochs); epochs are still reported to the study."""

    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConfig(PrunerConfig):
    """Stop a trial whose epoch value is worse than the median of earlier trials at that epoch."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 1
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class SuccessiveHalvingPrunerConfig(PrunerConfig):
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPrunerConfig(PrunerConfig):
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class ThresholdPrunerConfig(PrunerConfig):
    """Stop a trial whose epoch value leaves [lower, upper]."""

    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: Optional[float] = None
    upper: Optional[float] = None
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class OptimlabSweeperConf:
    _target_: str = OPTIMLAB_SWEEPER
    # sampler and pruner are built by the sweeper (per worker seed), not by Hydra
    _recursive_: bool = False
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])

    # hydra-optuna-sweeper's keys, with its meaning (README, "Differences from hydra-optuna-sweeper")
    sampler: Any = MISSING
    # key=choice(…)/range(…)/interval(…) lines; the command line's sweeps add to them
    params: Optional[Dict[str, str]] = None
    # deprecated upstream: {key: {type, low, high, log, step, choices}}, read only without params
    search_space: Optional[Dict[str, Any]] = None
    # "module.function": (cfg, trial) -> None adds (conditional) params of its own
    custom_search_space: Optional[str] = None

    pruner: Any = MISSING
    # null: the run's objective.direction
    direction: Any = None
    # null: a file in the sweep dir (SQLite `optuna.db` for one worker, JournalFileBackend
    # `optuna.journal` for several); or any Optuna URL: sqlite:///…, postgresql://…,
    # journal:///path/to/file.journal
    storage: Optional[str] = None
    study_name: Optional[str] = "optimlab"
    # finished (COMPLETE or PRUNED) trials the study must hold in total: resuming completes it
    n_trials: int = 20
    # trials per launcher call inside one worker (batched; 1 = fully asynchronous)
    n_jobs: int = 1
    # packed trials: each worker trains up to `pack` trials that differ only in hyperparameters
    # that keep the model's shapes (lr, momentum, weight_decay, betas, seed, scheduler factors)
    # together in one process, each still a trial of its own. 1: one trial at a time; auto:
    # pack only where it is measured to pay (so far nowhere: see README, "Packed trials")
    pack: Any = 1
    # asynchronous worker processes started by this command, each ask → run → tell; auto:
    # one per GPU when trials train on CUDA, else one per CPU core (each with cores / N
    # threads: small nets train more per second as N one-thread processes), at most n_trials
    n_workers: Any = 1
    # max_failure_rate, as upstream: stop when the share of failed trials among those this
    # sweep finished exceeds it (1.0: failures never stop the sweep). max_failures: stop when
    # more trials than this failed; auto: 5, or no count limit when max_failure_rate is set;
    # null: no count limit. Without a limit a sweep stops after n_trials failures in a row.
    max_failures: Any = "auto"
    max_failure_rate: Optional[float] = None
    # RDB storages: a worker's running trial sends a heartbeat every heartbeat_interval s;
    # after grace_period s without one it is marked FAIL. On every storage a worker marks
    # FAIL the trials of dead workers on its host (owner pid gone). Such a trial continues
    # from its last checkpoint with the same params, up to max_retry times (a trial stopped
    # by SIGTERM / Ctrl-C always continues)
    heartbeat_interval: Optional[int] = 10
    grace_period: Optional[int] = 30
    max_retry: int = 1
    # seconds a worker waits out an unreachable storage (a database server down or restarting,
    # a locked SQLite file, a journal's I/O error), trying again 0.5 s, 1 s, 2 s … (at most
    # 10 s) apart, its running trials training on; past it the sweep stops with one line and
    # the same command continues it
    storage_patience: float = 300.0
    # give each worker its own GPU (CUDA_VISIBLE_DEVICES by worker index) when several exist
    assign_gpus: bool = True
    # a study records its definition (the trials' config without their params, and the search
    # space); resuming it with another one is refused unless allow_changes, which records the
    # change in the study (user attribute optimlab.changes) and goes on
    allow_changes: bool = False
    # warm start: a NEW study (no trials yet) first trains the best warm_start_k COMPLETE trials
    # of an earlier study (its Pareto front with several objectives), with the params this search
    # space has when their values lie inside it. The earlier study: its sweep folder, or
    # <storage URL>#<study name> (without #name: the storage's one study). Resuming leaves it aside
    warm_start: Optional[str] = None
    warm_start_k: int = 3
    # summary: plots every plot_every finished trials (0: at the end only); top_k rows logged
    plots: bool = True
    plot_every: int = 0
    top_k: int = 5
    # set on the worker processes that a sweep with n_workers > 1 starts
    worker_index: int = 0
    session: Optional[str] = None


cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="optimlab", node=OptimlabSweeperConf, provider="optimlab_sweeper")
for name, node in {
    "none": NopPrunerConfig,
    "median": MedianPrunerConfig,
    "successive_halving": SuccessiveHalvingPrunerConfig,
    "hyperband": HyperbandPrunerConfig,
    "threshold": ThresholdPrunerConfig,
}.items():
    cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider="optimlab_sweeper")
