"""A user's own ``@hydra.main`` script with its own training loop and no optimlab code
besides one call: ``current_trial()`` (None when it is not a job of an optimlab sweep).

Each epoch moves the loss from 10 toward its floor ``(x - 2)**2`` by the fraction ``lr``; the
loop reports every epoch to the trial and stops when the sweep's pruner says so.
"""

import hydra
import optuna

from optimlab.sweeping import current_trial


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg) -> float:
    trial = current_trial()
    floor, loss = (cfg.x - 2) ** 2, 10.0
    for epoch in range(cfg.epochs):
        loss = floor + (loss - floor) * (1 - cfg.lr)
        if trial is not None:
            trial.report(loss, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")
    return loss


if __name__ == "__main__":
    main()
