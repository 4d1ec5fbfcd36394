"""The one hook between a sweep and the training loop: report each epoch's value to the
trial, stop when the pruner says so.

The sweeper passes the trial's identity to its job through the job's environment
(``hydra.job.env_set``); the job rebuilds a live ``optuna.trial.Trial(study, trial_id)``
from the persistent storage, so this works in any process (in-process, joblib, submitit).
"""

from __future__ import annotations

import math
import os

ENV_TRIAL_ID = "OPTIMLAB_TRIAL_ID"
ENV_TRIAL_NUMBER = "OPTIMLAB_TRIAL_NUMBER"
ENV_STORAGE = "OPTIMLAB_STORAGE"
ENV_STUDY = "OPTIMLAB_STUDY"


class PruningCallback:
    """``on_epoch_end``: trial.report(metric, epoch); raise optuna.TrialPruned when told to."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def on_epoch_end(self, result, state) -> None:
        import optuna

        value = getattr(result, self.metric)
        if not math.isfinite(value):
            return  # the loop reports divergence itself
        self.trial.report(value, result.epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {result.epoch} ({self.metric}={value:.4g})")


def trial_callbacks(cfg) -> list:
    """The callbacks a run needs when it is a trial of an optimlab sweep (else none)."""
    trial_id = os.environ.get(ENV_TRIAL_ID)
    if not trial_id:
        return []
    import optuna
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from optimlab.sweeping.storage import open_storage

    pruner_cfg = HydraConfig.get().sweeper.get("pruner")
    pruner = instantiate(pruner_cfg) if pruner_cfg else optuna.pruners.NopPruner()
    study = optuna.load_study(
        study_name=os.environ[ENV_STUDY],
        storage=open_storage(os.environ[ENV_STORAGE]),
        pruner=pruner,
        sampler=optuna.samplers.RandomSampler(),
    )
    return [PruningCallback(optuna.trial.Trial(study, int(trial_id)), cfg.objective.metric)]
