"""optimlab's Optuna sweeps: the sweeper (ask → launch one job → tell, in async workers),
storages, the per-epoch pruning hook a trial's job adds, and the sweep-folder summary.

``current_trial()`` is the public call for any Hydra app's own loop: the live
``optuna.trial.Trial`` of the sweep job running now (None outside a sweep)."""

from optimlab.sweeping.pruning import current_trial

__all__ = ["current_trial"]
