"""The best validation epoch's weights, kept as a run trains: in memory, in ``best.pt`` (written
atomically each time an epoch improves) and in every checkpoint, so a resumed run continues
from the recorded best and its test figures come from the same weights an uninterrupted run
would test on.

"Best" is the run's objective (:func:`optimlab.objective.selection`: the first objective
that is an epoch metric, in its direction); the first of equal epochs wins, as in
``summary.json``'s ``objective.best_epoch``.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from optimlab import objective
from optimlab.engine.metrics import EpochResult
from optimlab.run.folder import Checkpoint, RunFolder

log = logging.getLogger(__name__)


def _copy(state_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


class BestWeights:
    """The best epoch so far: its number, value and weights (a CPU copy of the model's state)."""

    def __init__(self, folder: RunFolder, cfg: DictConfig, inputs: dict[str, Any]):
        self.folder, self.cfg, self.inputs = folder, cfg, inputs
        self.metric, self.direction = objective.selection(cfg.objective)
        self.epoch: int | None = None
        self.value: float | None = None
        self.model: dict[str, Any] | None = None  # None: not known (an old checkpoint) or no epoch yet

    @classmethod
    def of(cls, folder: RunFolder, cfg: DictConfig, inputs: dict[str, Any], resumed: Checkpoint | None) -> BestWeights:
        """A run's best so far: none for a new run; a resumed run's, from its checkpoint."""
        found = cls(folder, cfg, inputs)
        if resumed is not None:
            found.restore(resumed)
        return found

    def update(self, result: EpochResult, model) -> bool:
        """After an epoch: keep its weights (memory and best.pt) if it beats the best so far."""
        value = getattr(result, self.metric)
        if not (objective.is_finite(value) and objective.better(value, self.value, self.direction)):
            return False
        self.epoch, self.value, self.model = result.epoch, float(value), _copy(model.state_dict())
        self.write()
        return True

    def record(self, epoch: int) -> dict[str, Any] | None:
        """What a checkpoint after ``epoch`` keeps of the best: the weights only when they
        are not the checkpoint's own (the best epoch is the saved one)."""
        if self.epoch is None:
            return None
        model = None if self.epoch == epoch else self.model
        return {"epoch": self.epoch, "metric": self.metric, "direction": self.direction, "value": self.value,
                "model": model}  # fmt: skip

    def restore(self, checkpoint: Checkpoint) -> None:
        """From a checkpoint being resumed (nothing written: :meth:`write` then makes best.pt
        match it — a new folder gets its own; in place, a best.pt of epochs after the
        checkpoint is replaced)."""
        saved = checkpoint.best
        if saved is not None and (saved["metric"], saved["direction"]) == (self.metric, self.direction):
            self.epoch, self.value = int(saved["epoch"]), float(saved["value"])
            self.model = saved["model"] if saved["model"] is not None else _copy(checkpoint.payload["model"])
        else:  # a checkpoint from before best weights were kept: the best of its history
            found = objective.best(checkpoint.history, lambda r: getattr(r, self.metric), self.direction)
            if found is not None:
                self.epoch, self.value = found.epoch, float(getattr(found, self.metric))
                self.model = _copy(checkpoint.payload["model"]) if found.epoch == checkpoint.epoch else None
                if self.model is None:
                    log.warning("the checkpoint holds no weights of its best epoch %d: best.pt starts with the next "
                                "better epoch", found.epoch)  # fmt: skip

    def write(self) -> None:
        """best.pt := the best so far (a resumed run's first write); removed when its weights are not known."""
        if self.model is None:
            self.folder.discard_best()
        else:
            self.folder.save_best(self.epoch, self.metric, self.direction, self.value, self.model, self.inputs, self.cfg)

    def summary(self) -> dict[str, Any] | None:
        """summary.json's ``best_weights``: the epoch whose weights best.pt holds, and why."""
        if self.epoch is None or self.model is None:
            return None
        return {"epoch": self.epoch, "metric": self.metric, "direction": self.direction, "value": self.value}
