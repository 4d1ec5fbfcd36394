"""TensorBoard event files in the run folder: per-epoch scalars and the run's hyperparameters.

``tensorboard --logdir multirun/<date>/<sweep>`` then shows every job of a sweep as one
run (named by its folder) and the HPARAMS tab compares them. ``tensorboard=false``
switches this off.
"""

from __future__ import annotations

from typing import Any

from optimlab.engine.metrics import EPOCH_METRICS, LOGGER_TAGS
from optimlab.engine.training import EpochResult, TrainState
from optimlab.observe.context import RunContext
from optimlab.observe.loggers import TEST_TAGS, Objectives, end_scalars

# what the HPARAMS tab lists as metrics besides the objective(s) (each one a scalar tag of the run)
HPARAM_METRICS = [*(LOGGER_TAGS[m] for m in reversed(EPOCH_METRICS)), *TEST_TAGS.values()]


class TensorBoardLogger:
    """Training callback: one SummaryWriter on the run folder, closed at the end of the run."""

    def __init__(self, run: RunContext):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        # purge_step: a resumed run drops events logged after its checkpoint
        start = run.start_epoch
        self.writer = SummaryWriter(log_dir=str(run.log_dir), purge_step=start + 1 if start else None)
        self.objectives = Objectives(run.objectives)
        self.hparams = run.hparams
        metrics = [*dict.fromkeys(self.objectives.tags.values()), *HPARAM_METRICS]
        experiment, session_start, _ = hparams_summary(self.hparams, {m: 0.0 for m in metrics})
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(session_start)

    def on_epoch_end(self, result: EpochResult, state: TrainState) -> None:
        for field, tag in LOGGER_TAGS.items():
            self.writer.add_scalar(tag, getattr(result, field), result.epoch)
        for tag, value in self.objectives.epoch(result).items():
            self.writer.add_scalar(tag, value, result.epoch)  # best so far
        self.writer.flush()

    def on_run_end(self, summary: dict[str, Any]) -> None:
        step = summary.get("epochs_completed") or 0
        final = end_scalars(summary)
        # run metrics (train_seconds, images_per_s, n_parameters) exist only now; epoch metrics have their curve
        final.update({k: v for k, v in self.objectives.end(summary).items() if k not in self.objectives.epoch_tags})
        for tag, value in final.items():
            self.writer.add_scalar(tag, value, step)
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
