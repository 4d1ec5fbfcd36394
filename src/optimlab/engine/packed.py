"""Several trials trained together, epoch by epoch, each as :func:`optimlab.engine.training.fit`
would train it alone (same callbacks, same :class:`EpochResult` history).

This version trains the pack in lockstep: each epoch, every trial still in the pack runs
its own epoch in turn. A trial whose callback raises (pruning) or whose loss diverges
leaves the pack; its exception is returned in its slot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import nn

from optimlab.engine.data import DeviceData
from optimlab.engine.training import Callback, EpochResult, LoopConfig, TrainState, evaluate, train_one_epoch

# LoopConfig fields that trials of one pack share (they set the batches and the epochs)
SHARED = ("epochs", "batch_size", "precision", "eval_batch_size", "compile")


def check_packable(states: Sequence[TrainState], cfgs: Sequence[LoopConfig]) -> None:
    """Raise ValueError naming what differs between trials that cannot train as one pack."""
    if len(states) != len(cfgs) or not states:
        raise ValueError(f"a pack needs one loop config per state, got {len(states)} states and {len(cfgs)} configs")
    for name in SHARED:
        values = {getattr(c, name) for c in cfgs}
        if len(values) > 1:
            raise ValueError(f"trials of a pack differ in {name}: {sorted(map(str, values))}")
    epochs = {s.epoch for s in states}
    if len(epochs) > 1:
        raise ValueError(f"trials of a pack start at different epochs: {sorted(epochs)}")
    kinds = {type(s.model).__name__ for s in states}
    if len(kinds) > 1:
        raise ValueError(f"trials of a pack differ in model: {sorted(kinds)}")


def fit_packed(
    states: Sequence[TrainState],
    data: DeviceData,
    cfgs: Sequence[LoopConfig],
    callbacks: Sequence[Sequence[Callback]],
) -> list[BaseException | None]:
    """Train each state up to its ``cfg.epochs``; per trial, None when it finished or the
    exception that made it leave the pack. KeyboardInterrupt and SystemExit propagate."""
    check_packable(states, cfgs)
    loss_fn = nn.CrossEntropyLoss()
    outcome: list[BaseException | None] = [None] * len(states)
    live = list(range(len(states)))
    n_train = len(data.train)
    while live:
        for i in list(live):
            state, cfg = states[i], cfgs[i]
            if state.epoch >= cfg.epochs:
                live.remove(i)
                continue
            try:
                _epoch(state, data, cfg, loss_fn, callbacks[i], n_train)
            except Exception as e:  # noqa: BLE001 - the trial leaves the pack, the others go on
                outcome[i] = e
                live.remove(i)
    return outcome


def _epoch(state: TrainState, data: DeviceData, cfg: LoopConfig, loss_fn, callbacks, n_train: int) -> None:
    lr = state.optimizer.param_groups[0]["lr"]
    t0 = time.perf_counter()
    train_loss = train_one_epoch(state, data, cfg, loss_fn)
    if data.device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - t0
    val_loss, val_acc = evaluate(state.model, data, "val", cfg)
    if cfg.interval == "epoch":
        state.scheduler.step()
    elif cfg.interval == "metric":
        state.scheduler.step({"val_loss": val_loss, "val_acc": val_acc}[cfg.monitor])
    state.epoch += 1
    result = EpochResult(
        epoch=state.epoch, lr=lr, train_loss=train_loss, val_loss=val_loss, val_acc=val_acc,
        seconds=time.perf_counter() - t0, images_per_s=n_train / train_seconds if train_seconds > 0 else math.inf,
    )  # fmt: skip
    state.history.append(result)
    for callback in callbacks:
        callback.on_epoch_end(result, state)
