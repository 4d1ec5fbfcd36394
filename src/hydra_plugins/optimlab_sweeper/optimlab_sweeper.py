"""``hydra/sweeper=optimlab``: a thin Hydra Sweeper over optimlab.sweeping.OptimlabSweeperImpl."""

from typing import Any, List

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptimlabSweeper(Sweeper):
    """Optuna sweeps with pruning, resume, async workers and failure tolerance."""

    def __init__(self, **kwargs: Any) -> None:
        from hydra_plugins.optimlab_sweeper.config import OptimlabSweeperConf
        from optimlab.sweeping.settings import SweepSettings
        from optimlab.sweeping.sweeper import OptimlabSweeperImpl

        self.sweeper = OptimlabSweeperImpl(SweepSettings.from_conf(OptimlabSweeperConf, kwargs))

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> None:
        return self.sweeper.sweep(arguments)
