"""What one epoch measures: the metric columns, their logger tags and directions, declared
once. No torch and no optimlab import here: every layer (the objective, the run folder,
resume checks, loggers, the report, the sweeper) reads metrics from this module."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


def _column(tag: str, direction: str | None = None, timing: bool = False) -> Any:
    return field(metadata={"tag": tag, "direction": direction, "timing": timing})


@dataclass
class EpochResult:
    """One epoch's metrics: THE declaration of the metric columns (metrics.csv, plots,
    TensorBoard and every other logger read them from here). ``tag``: the name loggers use."""

    epoch: int = _column("epoch")
    lr: float = _column("lr")
    train_loss: float = _column("train/loss", "minimize")
    val_loss: float = _column("val/loss", "minimize")
    val_acc: float = _column("val/acc", "maximize")
    seconds: float = _column("perf/epoch_s", timing=True)
    images_per_s: float = _column("perf/images_per_s", timing=True)

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


METRIC_COLUMNS = tuple(f.name for f in fields(EpochResult))
# the columns code reads by name (a metrics.csv row, a summary's best epoch, a scheduler's monitor)
TRAIN_LOSS, VAL_LOSS, VAL_ACC, SECONDS = "train_loss", "val_loss", "val_acc", "seconds"
assert {TRAIN_LOSS, VAL_LOSS, VAL_ACC, SECONDS} <= set(METRIC_COLUMNS)
# columns that measure the machine, not the math: they differ between identical runs
TIMING_COLUMNS = tuple(f.name for f in fields(EpochResult) if f.metadata["timing"])
LOGGER_TAGS = {f.name: f.metadata["tag"] for f in fields(EpochResult) if f.name != "epoch"}
# the columns an objective can name (its best over the epochs) -> the direction that makes it better
EPOCH_METRICS = {f.name: f.metadata["direction"] for f in fields(EpochResult) if f.metadata["direction"] and not f.metadata["timing"]}
DIRECTIONS = ("maximize", "minimize")
