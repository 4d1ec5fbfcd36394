"""THE training loop, readable top to bottom.

The seeds' recipe done right: ``zero_grad → forward → loss → backward →
optimizer.step()``, then the scheduler at its own granularity (never *instead of*
``optimizer.step()``); losses are accumulated detached, evaluation runs in
``model.eval()`` under ``torch.inference_mode()``.

Anything outside the loop (metrics files, checkpoints, progress, a sweeper's
pruning) hooks in through callbacks' ``on_epoch_end(result, state)``; a callback
stops training by raising.

What a step and an epoch leave behind is written once, here, for solo and packed
training (:mod:`optimlab.engine.packed`) alike: :class:`StepLosses` (the step losses,
the batch hooks, the divergence check, the epoch's mean loss), :class:`EpochClock`
and :func:`end_epoch` (the scheduler's epoch step, the EpochResult, the callbacks).
A pack supplies only its stacked forward/backward and each trial's optimizer step.
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

    # optional: on_batch_end(state, step, n_steps, losses), see StepLosses


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


def batch_hooks(callbacks: Sequence[Callback]) -> list[BatchHook]:
    """The callbacks' optional ``on_batch_end`` hooks, in order."""
    return [cb.on_batch_end for cb in callbacks if hasattr(cb, "on_batch_end")]


class StepLosses:
    """One model's training losses over one epoch, step by step, solo or in a pack.

    Each step's loss is kept detached on the device (no graph), shown to the batch hooks
    (``hook(state, step, n_steps, losses of steps 1..step)``; reading them syncs the device,
    so a hook should do so only now and then) and checked for NaN/inf every ``check_every``
    steps and at the epoch's last step (each check syncs; a non-finite loss raises
    :class:`Diverged`). :meth:`mean` is the epoch's training loss, averaged over its images.
    """

    def __init__(self, state: TrainState, cfg: LoopConfig, n_steps: int, device: torch.device,
                 hooks: Sequence[BatchHook] = ()):  # fmt: skip
        self.state, self.check_every, self.hooks = state, cfg.check_every, list(hooks)
        self.losses = torch.zeros(n_steps, device=device)
        self.sizes: list[int] = []

    def add(self, loss: torch.Tensor, size: int) -> None:
        """The next step's loss over ``size`` images; raises what a hook raises, or Diverged."""
        step = len(self.sizes) + 1  # counted from 1
        self.losses[step - 1] = loss.detach()
        self.sizes.append(size)
        n_steps = len(self.losses)
        for hook in self.hooks:
            hook(self.state, step, n_steps, self.losses[:step])
        if step % self.check_every == 0 or step == n_steps:
            _check_finite(self.losses, step, self.state.epoch)

    def mean(self) -> float:
        sizes = torch.tensor(self.sizes, dtype=torch.float32, device=self.losses.device)
        return float((self.losses[: len(self.sizes)] * sizes).sum() / sizes.sum())


def train_one_epoch(
    state: TrainState, data: DeviceData, cfg: LoopConfig, loss_fn: nn.Module, hooks: Sequence[BatchHook] = ()
) -> float:
    """One pass over the training split; returns the mean training loss. ``hooks``: batch
    hooks (a progress bar), see :class:`StepLosses`."""
    model, optimizer, scheduler, scaler = state.model, state.optimizer, state.scheduler, state.scaler
    model.train()
    losses = StepLosses(state, cfg, data.steps_per_epoch(cfg.batch_size), data.device, hooks)
    for x, y in data.train_batches(cfg.batch_size, cfg.seed, state.epoch):
        optimizer.zero_grad(set_to_none=True)
        with autocast(data.device, cfg.precision):
            logits = model(x)
            loss = loss_fn(logits, y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if cfg.interval == "batch":
            scheduler.step()
        losses.add(loss, len(y))  # the batch hooks; the NaN/inf check every check_every steps
    return losses.mean()


class EpochClock:
    """An epoch's start, for its EpochResult: the time, and the lr each model starts it with."""

    def __init__(self, states: Sequence[TrainState], data: DeviceData):
        self.lrs = {id(s): s.optimizer.param_groups[0]["lr"] for s in states}
        self.device, self.n_train = data.device, len(data.train)
        self.t0 = time.perf_counter()
        self.train_s = 0.0

    def trained(self) -> None:
        """Training steps done: the device finishes its queued work and the training time is taken."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.train_s = time.perf_counter() - self.t0


def end_epoch(state: TrainState, cfg: LoopConfig, clock: EpochClock, train_loss: float, val_loss: float,
              val_acc: float, callbacks: Sequence[Callback]) -> EpochResult:  # fmt: skip
    """The end of one model's epoch, solo or in a pack: the scheduler's step (per epoch, or on the
    monitored metric), the epoch counted, its EpochResult appended to the history and handed to
    every callback (a callback stops training by raising)."""
    if cfg.interval == "epoch":
        state.scheduler.step()
    elif cfg.interval == "metric":
        state.scheduler.step({VAL_LOSS: val_loss, VAL_ACC: val_acc}[cfg.monitor])
    state.epoch += 1
    result = EpochResult(
        epoch=state.epoch,
        lr=clock.lrs[id(state)],
        train_loss=train_loss,
        val_loss=val_loss,
        val_acc=val_acc,
        seconds=time.perf_counter() - clock.t0,
        images_per_s=clock.n_train / clock.train_s if clock.train_s > 0 else math.inf,
    )
    state.history.append(result)
    for callback in callbacks:
        callback.on_epoch_end(result, state)
    return result


def fit(state: TrainState, data: DeviceData, cfg: LoopConfig, callbacks: Sequence[Callback] = ()) -> TrainState:
    """Train from ``state.epoch`` up to ``cfg.epochs``; callbacks see every finished epoch."""
    loss_fn = nn.CrossEntropyLoss()
    hooks = batch_hooks(callbacks)
    if cfg.compile and state.epoch < cfg.epochs:
        log.info("torch.compile warm-up: %.1fs (not counted in epoch timings)", warm_up(state, data, cfg, loss_fn))
    while state.epoch < cfg.epochs:
        clock = EpochClock([state], data)
        train_loss = train_one_epoch(state, data, cfg, loss_fn, hooks)
        clock.trained()
        val_loss, val_acc = evaluate(state.model, data, "val", cfg)
        end_epoch(state, cfg, clock, train_loss, val_loss, val_acc, callbacks)
    return state
