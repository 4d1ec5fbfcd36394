"""The one hook between a sweep and the training loop: report each epoch's value to the
trial, stop when the pruner says so. :func:`current_trial` hands the same trial to any
Hydra app's own loop.

The sweeper hands each job its trial through one environment variable of the job
(``hydra.job.env_set``), so this works in any process (in-process, joblib, submitit);
the job rebuilds a live ``optuna.trial.Trial`` from the persistent storage, with the
pruner built by :func:`make_pruner` from the same sweeper config the sweeper used.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from optimlab.errors import Pruned, StorageUnreachable
from optimlab.observe.context import TRIAL_ENV, TrialLink  # noqa: F401  (TRIAL_ENV: re-exported)

log = logging.getLogger(__name__)

def make_pruner(pruner_cfg: Any):
    """THE pruner of a sweep (sweeper and trials alike): the config's, or none."""
    import optuna
    from hydra.utils import instantiate

    return instantiate(pruner_cfg) if pruner_cfg else optuna.pruners.NopPruner()


class PruningCallback:
    """``on_epoch_end``: trial.report(metric, epoch); raise :class:`Pruned` when told to.

    Reporting is a service to the study, never a reason for the trial to fail: if the
    storage refuses a report, the trial logs it once and trains on unpruned. While the
    storage is unreachable (sweeping/outage.py) the trial trains on: its epochs' values are
    reported, and the pruner asked, once it is back; the last epoch's report waits for it
    (the trial ends with it). Past the sweep's patience the trial stops (its last epoch is
    saved) and so does the sweep: the same command continues it."""

    def __init__(self, trial, metric: str, *, last_epoch: int):
        self.trial, self.metric, self.broken, self.last_epoch = trial, metric, False, last_epoch
        self.pending: dict[int, float] = {}  # epoch -> value not yet reported (the storage was away)

    @classmethod
    def for_run(cls, trial, cfg) -> PruningCallback:
        """THE pruning rule of a trial's run, solo or packed: the objective's metric each
        epoch, never pruned after the config's last epoch."""
        return cls(trial, cfg.objective.metric, last_epoch=cfg.epochs)

    def on_epoch_end(self, result, state) -> None:
        from optimlab.sweeping.outage import is_transient, without_waiting

        value = getattr(result, self.metric)
        if self.broken or not math.isfinite(value):
            return  # the loop reports divergence itself
        self.pending[result.epoch] = value
        last = result.epoch == self.last_epoch
        try:
            with without_waiting(not last):
                for epoch in sorted(self.pending):
                    self.trial.report(self.pending[epoch], epoch)
                    del self.pending[epoch]
                # after the last epoch stopping saves nothing: the trial completes with its value
                # (successive halving's rung at epoch 9 of 9 would otherwise discard a finished trial)
                prune = not last and self.trial.should_prune()
        except StorageUnreachable:
            raise
        except Exception as e:  # noqa: BLE001
            if is_transient(e):
                return  # the storage is away: train on, report when it is back
            self.broken = True
            log.warning("trial %d: cannot report epoch %d to the study (%s: %s); it runs on without pruning",
                        self.trial.number, result.epoch, type(e).__name__, e)  # fmt: skip
            return
        if prune:
            raise Pruned(f"pruned after epoch {result.epoch} ({self.metric}={value:.4g})")


def current_trial():
    """The live ``optuna.trial.Trial`` of the sweep job running now; None outside a job of
    ``hydra/sweeper=optimlab``. Works in any Hydra app: ``trial.report(value, step)`` and
    ``trial.should_prune()`` (then ``raise optuna.TrialPruned()``), or hand it to
    optuna-integration's Lightning pruning callback (``trial=``, ``monitor=``).

    The trial is rebuilt from the study's storage with the sweep's own pruner, once per job.
    If the storage cannot be reached the job gets None (one warning line) and runs unpruned.
    """
    link = TrialLink.from_env()
    if link is None:
        return None
    if _live.get("link") != link:
        _live.clear()
        _live.update(link=link, trial=_load(link))
    return _live["trial"]


_live: dict[str, Any] = {}  # this process's job: its link and trial (a sweep runs jobs one after another)


def _load(link: TrialLink):
    import optuna
    from hydra.core.hydra_config import HydraConfig

    from optimlab.sweeping.storage import open_storage

    try:
        sweeper = HydraConfig.get().sweeper if HydraConfig.initialized() else {}
        storage = open_storage(link.storage, patience=sweeper.get("storage_patience"))
        pruner = sweeper.get("pruner")
        study = optuna.load_study(
            study_name=link.study, storage=storage, pruner=make_pruner(pruner), sampler=optuna.samplers.RandomSampler(),
        )  # fmt: skip
        study_id = storage.get_study_id_from_name(link.study)
        return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, link.number))
    except StorageUnreachable:
        raise
    except Exception as e:  # noqa: BLE001 - the sweeper records the trial's result whatever happens here
        log.warning("trial %d: no per-epoch reports to the study (%s: %s)", link.number, type(e).__name__, e)
        return None


TRIAL_RESOLVER = "optimlab.trial"


def trial_resolver():
    """``${optimlab.trial:}`` in a config: :func:`current_trial`, for a callback built from YAML
    (the ``trial`` of optuna-integration's Lightning pruning callback). Outside a sweep's job it is Optuna's
    ``FixedTrial({})``: reports go nowhere and it never prunes, so the same config (the best
    trial's command) also trains as a single run."""
    import optuna

    _show_trials_short()
    return current_trial() or optuna.trial.FixedTrial({})


def _show_trials_short() -> None:
    """A printed resolved config (lightning-hydra-template prints it) shows the trial as one
    line, ``!optuna.trial 3``, not a dump of the study and its storage."""
    import optuna
    import yaml

    try:
        from omegaconf._utils import get_omega_conf_dumper  # the dumper OmegaConf.to_yaml uses
    except ImportError:
        return
    yaml.add_multi_representer(
        optuna.trial.BaseTrial, lambda dumper, t: dumper.represent_scalar("!optuna.trial", str(t.number)), Dumper=get_omega_conf_dumper()
    )  # fmt: skip


def register_resolver() -> None:
    """Make ``${optimlab.trial:}`` available (idempotent; cheap: nothing is imported)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(TRIAL_RESOLVER):
        OmegaConf.register_new_resolver(TRIAL_RESOLVER, trial_resolver)


def trial_callbacks(cfg) -> list:
    """The callbacks a run needs when it is a trial of an optimlab sweep (else none): THE
    pruning rule (:meth:`PruningCallback.for_run`) for the trial of this job's link, called by
    optimlab's task for a lone trial and by each packed trial's task (sweeping.packing) alike."""
    trial = current_trial()
    # Optuna cannot prune (or take intermediate values of) multi-objective trials
    if trial is None or len(trial.study.directions) > 1:
        return []
    return [PruningCallback.for_run(trial, cfg)]
