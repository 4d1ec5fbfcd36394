"""What one epoch measures: the metric columns, declared once. No torch here, so the run
folder, resume checks and the sweeper can read metrics without importing it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


def _column(tag: str, timing: bool = False) -> Any:
    return field(metadata={"tag": tag, "timing": timing})


@dataclass
class EpochResult:
    """One epoch's metrics: THE declaration of the metric columns (metrics.csv, plots,
    TensorBoard and every other logger read them from here). ``tag``: the name loggers use."""

    epoch: int = _column("epoch")
    lr: float = _column("lr")
    train_loss: float = _column("train/loss")
    val_loss: float = _column("val/loss")
    val_acc: float = _column("val/acc")
    seconds: float = _column("perf/epoch_s", timing=True)
    images_per_s: float = _column("perf/images_per_s", timing=True)

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


METRIC_COLUMNS = tuple(f.name for f in fields(EpochResult))
# columns that measure the machine, not the math: they differ between identical runs
TIMING_COLUMNS = tuple(f.name for f in fields(EpochResult) if f.metadata["timing"])
LOGGER_TAGS = {f.name: f.metadata["tag"] for f in fields(EpochResult) if f.name != "epoch"}
