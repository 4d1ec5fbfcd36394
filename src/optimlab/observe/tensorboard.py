"""TensorBoard event files in the run folder: per-epoch scalars and the run's hyperparameters.

``tensorboard --logdir multirun/<date>/<sweep>`` then shows every job of a sweep as one
run (named by its folder) and the HPARAMS tab compares them. ``tensorboard=false``
switches this off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optimlab import objective
from optimlab.engine.training import LOGGER_TAGS, EpochResult, TrainState

# what the HPARAMS tab lists as metrics (each one a scalar tag of the run)
HPARAM_METRICS = ["objective", "val/acc", "val/loss", "train/loss", "test/acc", "test/loss"]


class TensorBoardLogger:
    """Training callback: one SummaryWriter on the run folder, closed at the end of the run."""

    def __init__(self, log_dir: str | Path, hparams: dict[str, Any], metric: str, direction: str, start_epoch: int = 0):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        # purge_step: a resumed run drops events logged after its checkpoint
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=start_epoch + 1 if start_epoch else None)
        self.metric, self.direction = metric, direction
        self.best: float | None = None
        self.hparams = hparams
        experiment, session_start, _ = hparams_summary(self.hparams, {m: 0.0 for m in HPARAM_METRICS})
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(session_start)

    def on_epoch_end(self, result: EpochResult, state: TrainState) -> None:
        for field, tag in LOGGER_TAGS.items():
            self.writer.add_scalar(tag, getattr(result, field), result.epoch)
        value = getattr(result, self.metric)
        if objective.is_finite(value) and objective.better(value, self.best, self.direction):
            self.best = value
        if self.best is not None:
            self.writer.add_scalar("objective", self.best, result.epoch)  # best so far
        self.writer.flush()

    def on_run_end(self, summary: dict[str, Any]) -> None:
        step = summary.get("epochs_completed") or 0
        test = summary.get("test")
        if test:
            self.writer.add_scalar("test/acc", test["acc"], step)
            self.writer.add_scalar("test/loss", test["loss"], step)
        self.writer.file_writer.add_summary(session_end(summary.get("status")))
        self.writer.close()


def session_end(status: str | None):
    """The HParams plugin's SessionEndInfo summary for a run that ended with ``status``.

    (torch's ``hparams()`` always says success; tensorboard's own helper needs TensorFlow.)
    """
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME, SESSION_END_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    code = {"completed": Status.STATUS_SUCCESS, "running": Status.STATUS_RUNNING}.get(status, Status.STATUS_FAILURE)
    content = HParamsPluginData(session_end_info=SessionEndInfo(status=code), version=PLUGIN_DATA_VERSION)
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=content.SerializeToString())
    )
    return Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=metadata)])
