"""TensorBoard event files in the run folder: per-epoch scalars and the run's hyperparameters.

``tensorboard --logdir multirun/<date>/<sweep>`` then shows every job of a sweep as one
run (named by its folder) and the HPARAMS tab compares them. ``tensorboard=false``
switches this off.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from optimlab.training import EpochResult, TrainState

# scalar tag -> EpochResult field, written every epoch (step = epoch)
EPOCH_SCALARS = {
    "train/loss": "train_loss",
    "val/loss": "val_loss",
    "val/acc": "val_acc",
    "lr": "lr",
    "perf/images_per_s": "images_per_s",
    "perf/epoch_s": "seconds",
}
# what the HPARAMS tab lists as metrics (each one a scalar tag of the run)
HPARAM_METRICS = ["objective", "val/acc", "val/loss", "train/loss", "test/acc", "test/loss"]
KNOBS = ["lr", "momentum", "weight_decay", "batch_size", "epochs", "seed", "precision"]


def hparams_of(cfg: DictConfig, overrides: list[str] = ()) -> dict[str, Any]:
    """The run's hyperparameters as TensorBoard takes them (bool/int/float/str)."""
    found: dict[str, Any] = {k: cfg.get(k) for k in KNOBS if cfg.get(k) is not None}
    # the momentum the optimizer really uses: plain sgd ignores the knob, Adam's is beta1
    optimizer = cfg.get("optimizer") or {}
    if "momentum" in optimizer or "betas" in optimizer:
        momentum = optimizer.get("momentum") if "momentum" in optimizer else optimizer.get("betas")[0]
        found["momentum"] = float(momentum)
    for group in ("model", "optimizer", "scheduler"):
        target = cfg.get(group, {}).get("_target_")
        if target:
            found[group] = str(target).rsplit(".", 1)[-1]
    if cfg.get("data") is not None:
        found["data"] = cfg.data.get("name")
    # command-line overrides win: `optimizer=momentum` says more than `SGD`
    for item in overrides:
        key, sep, value = item.lstrip("+~").partition("=")
        if sep and not key.startswith("hydra."):
            found[key] = _scalar(value)
    return {k: v for k, v in found.items() if isinstance(v, (bool, int, float, str))}


def _scalar(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class TensorBoardLogger:
    """Training callback: one SummaryWriter on the run folder, closed at the end of the run."""

    def __init__(self, log_dir: str | Path, cfg: DictConfig, overrides: list[str] = (), start_epoch: int = 0):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # purge_step: a resumed run drops events logged after its checkpoint
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=start_epoch + 1 if start_epoch else None)
        self.metric = cfg.objective.metric
        self.maximize = cfg.objective.direction == "maximize"
        self.best: float | None = None
        self.hparams = hparams_of(cfg, list(overrides))
        experiment, session_start, _ = hparams(self.hparams, {m: 0.0 for m in HPARAM_METRICS})
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(session_start)

    def on_epoch_end(self, result: EpochResult, state: TrainState) -> None:
        for tag, field in EPOCH_SCALARS.items():
            self.writer.add_scalar(tag, getattr(result, field), result.epoch)
        value = getattr(result, self.metric)
        if math.isfinite(value) and (
            self.best is None or (value > self.best if self.maximize else value < self.best)
        ):
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
