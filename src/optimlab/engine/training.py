"""THE training loop, readable top to bottom.

The seeds' recipe done right: ``zero_grad → forward → loss → backward →
optimizer.step()``, then the scheduler at its own granularity (never *instead of*
``optimizer.step()``); losses are accumulated detached, evaluation runs in
``model.eval()`` under ``torch.inference_mode()``.

Anything outside the loop (metrics files, checkpoints, progress, a sweeper's
pruning) hooks in through callbacks' ``on_epoch_end(result, state)``; a callback
stops training by raising.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from optimlab.engine.data import DeviceData
from optimlab.engine.metrics import LOGGER_TAGS, METRIC_COLUMNS, TIMING_COLUMNS, EpochResult  # noqa: F401  (re-exported)
from optimlab.engine.metrics import VAL_ACC, VAL_LOSS
from optimlab.errors import Diverged

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Everything that changes while training, i.e. everything a checkpoint must hold."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    epoch: int = 0  # epochs completed
    history: list[EpochResult] = field(default_factory=list)


class Callback(Protocol):
    def on_epoch_end(self, result: EpochResult, state: TrainState) -> None: ...

    # optional: on_batch_end(state, step, n_steps, losses), see train_one_epoch


BatchHook = Callable[[TrainState, int, int, torch.Tensor], None]


@dataclass
class LoopConfig:
    epochs: int
    batch_size: int
    seed: int
    interval: str = "epoch"  # when the scheduler steps: epoch | batch | metric
    monitor: str = VAL_LOSS  # the metric a `metric` scheduler watches
    precision: str = "fp32"  # fp32 | bf16 | fp16
    eval_batch_size: int = 1024
    check_every: int = 1  # steps between NaN/inf checks (each check syncs the device)
    compile: bool = False  # the model is torch.compile'd: fit warms it up before the clocks start


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def evaluate(model: nn.Module, data: DeviceData, split: str, cfg: LoopConfig) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on a split, in large batches."""
    model.eval()
    loss_sum = torch.zeros((), device=data.device)
    correct = torch.zeros((), device=data.device, dtype=torch.long)
    for x, y in data.eval_batches(split, cfg.eval_batch_size):
        with autocast(data.device, cfg.precision):
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = len(getattr(data, split))
    return loss_sum.item() / n, correct.item() / n


def _sizes(n: int, batch_size: int) -> list[int]:
    """The batch sizes one pass over ``n`` samples uses: full batches and the remainder."""
    return sorted({min(batch_size, n), n % batch_size} - {0}, reverse=True)


def warm_up(state: TrainState, data: DeviceData, cfg: LoopConfig, loss_fn: nn.Module) -> float:
    """Run every batch shape of training and evaluation once, so a compiled model compiles now
    and not inside a timed epoch; returns the seconds it took.

    Leaves no trace: weights and buffers (BatchNorm statistics) are put back, gradients
    cleared, no optimizer step is taken and the RNG states are restored, so a compiled run
    trains exactly like an uncompiled one.
    """
    t0 = time.perf_counter()
    model, device = state.model, data.device
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    sizes = _sizes(len(data.train), cfg.batch_size)
    x, y = next(data.eval_batches("train", sizes[0]))
    model.train()
    for b in sizes:
        with autocast(device, cfg.precision):
            loss = loss_fn(model(x[:b]), y[:b])
        loss.backward()
    model.zero_grad(set_to_none=True)
    with torch.inference_mode():
        model.eval()
        for split in ("val", "test"):
            for b in _sizes(len(getattr(data, split)), cfg.eval_batch_size):
                with autocast(device, cfg.precision):
                    model(next(data.eval_batches(split, b))[0])
    model.load_state_dict(saved)
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _check_finite(losses: torch.Tensor, upto: int, epoch: int) -> None:
    """Raise Diverged at the first non-finite loss among ``losses[:upto]`` of 0-based ``epoch``.

    The error counts from 1, like metrics.csv and the log: epoch 1 is the first epoch,
    step 1 its first step."""
    window = losses[:upto]
    if bool(torch.isfinite(window).all()):
        return
    bad = int((~torch.isfinite(window)).nonzero()[0])
    last = float(window[bad - 1]) if bad > 0 else None
    raise Diverged(epoch=epoch + 1, step=bad + 1, loss=float(window[bad]), last_finite_loss=last)


def train_one_epoch(
    state: TrainState, data: DeviceData, cfg: LoopConfig, loss_fn: nn.Module, on_batch_end: BatchHook | None = None
) -> float:
    """One pass over the training split; returns the mean training loss.

    ``on_batch_end(state, step, n_steps, losses)`` (a progress bar) runs after each step
    with the detached losses of steps 1..step; reading them syncs the device, so it
    should do so only now and then.
    """
    model, optimizer, scheduler, scaler = state.model, state.optimizer, state.scheduler, state.scaler
    epoch = state.epoch
    model.train()
    n_steps = data.steps_per_epoch(cfg.batch_size)
    step_losses = torch.zeros(n_steps, device=data.device)  # detached, no graph kept
    step_sizes = torch.zeros(n_steps, device=data.device)
    checked = 0
    for step, (x, y) in enumerate(data.train_batches(cfg.batch_size, cfg.seed, epoch)):
        optimizer.zero_grad(set_to_none=True)
        with autocast(data.device, cfg.precision):
            logits = model(x)
            loss = loss_fn(logits, y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if cfg.interval == "batch":
            scheduler.step()
        step_losses[step] = loss.detach()
        step_sizes[step] = len(y)
        if on_batch_end is not None:
            on_batch_end(state, step + 1, n_steps, step_losses[: step + 1])
        if (step + 1) % cfg.check_every == 0:
            _check_finite(step_losses, step + 1, epoch)
            checked = step + 1
    if checked < n_steps:
        _check_finite(step_losses, n_steps, epoch)
    return float((step_losses * step_sizes).sum() / step_sizes.sum())


def end_epoch(state: TrainState, cfg: LoopConfig, val_loss: float, val_acc: float) -> None:
    """The scheduler's step at an epoch's end (per epoch, or on the monitored metric); the epoch counts."""
    if cfg.interval == "epoch":
        state.scheduler.step()
    elif cfg.interval == "metric":
        state.scheduler.step({VAL_LOSS: val_loss, VAL_ACC: val_acc}[cfg.monitor])
    state.epoch += 1


def fit(state: TrainState, data: DeviceData, cfg: LoopConfig, callbacks: Sequence[Callback] = ()) -> TrainState:
    """Train from ``state.epoch`` up to ``cfg.epochs``; callbacks see every finished epoch."""
    loss_fn = nn.CrossEntropyLoss()
    batch_hooks = [cb.on_batch_end for cb in callbacks if hasattr(cb, "on_batch_end")]

    def on_batch_end(*args) -> None:
        for hook in batch_hooks:
            hook(*args)

    n_train = len(data.train)
    if cfg.compile and state.epoch < cfg.epochs:
        log.info("torch.compile warm-up: %.1fs (not counted in epoch timings)", warm_up(state, data, cfg, loss_fn))
    while state.epoch < cfg.epochs:
        lr = state.optimizer.param_groups[0]["lr"]  # the lr this epoch starts with
        t0 = time.perf_counter()
        train_loss = train_one_epoch(state, data, cfg, loss_fn, on_batch_end if batch_hooks else None)
        if data.device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds = time.perf_counter() - t0
        val_loss, val_acc = evaluate(state.model, data, "val", cfg)
        end_epoch(state, cfg, val_loss, val_acc)
        result = EpochResult(
            epoch=state.epoch,
            lr=lr,
            train_loss=train_loss,
            val_loss=val_loss,
            val_acc=val_acc,
            seconds=time.perf_counter() - t0,
            images_per_s=n_train / train_seconds if train_seconds > 0 else math.inf,
        )
        state.history.append(result)
        for callback in callbacks:
            callback.on_epoch_end(result, state)
    return state
