"""optimlab's Optuna sweeps: the sweeper (ask → launch one job → tell, in async workers),
storages, the per-epoch pruning hook a trial's job adds, and the sweep-folder summary."""
