"""What a run prints while it trains: a live progress bar per epoch and one line per epoch.

- On a terminal: a rich progress bar during each epoch's training steps (mean loss so
  far, last validation accuracy, lr, images/s), erased when the epoch's steps are done;
  then one summary line per epoch through logging (so it lands in ``train.log`` too).
- Not a terminal (CI, files, Slurm logs): no bar and no carriage returns; plain log
  lines, one per epoch plus, in long epochs, a step line at most every ``plain_every_s``.
- ``quiet=true``: no bar and no step lines; the epoch lines still go to the log.

The bar reads the loss tensor only when it redraws (a few times a second), so on a GPU
it costs one device sync per redraw, not one per step.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from optimlab.engine.metrics import EPOCH_METRICS
from optimlab.engine.training import EpochResult, TrainState

log = logging.getLogger(__name__)


def epoch_line(result: EpochResult, epochs: int) -> str:
    values = "  ".join(f"{m} {getattr(result, m):.4f}" for m in EPOCH_METRICS)
    return f"epoch {result.epoch}/{epochs}  lr {result.lr:.4g}  {values}  {result.seconds:.1f}s  {result.images_per_s:.0f} img/s"


def weights_words(test: dict[str, Any]) -> str:
    """Which weights a test figure comes from, in words: ``best epoch 3 weights``."""
    return f"{test.get('weights')} epoch {test.get('epoch')} weights"


def run_line(summary: dict[str, Any]) -> str:
    """One line for a finished run: status, objective, test accuracy, duration, overrides."""
    objective = summary.get("objective") or {}
    parts = [f"run {summary.get('status', '?')}"]
    value = objective.get("value")
    if objective.get("values") is not None:  # several objectives
        parts.append(", ".join(f"{m} {v:.4g}" for m, v in zip(objective["metrics"], objective["values"])))
    elif isinstance(value, (int, float)) and math.isfinite(value):
        parts.append(f"{objective.get('metric')} {value:.4f} (best, epoch {objective.get('best_epoch')})")
    test = summary.get("test")
    if test:
        parts.append(f"test_acc {test['acc']:.4f}" + (f" ({weights_words(test)})" if test.get("weights") else ""))
    total = (summary.get("durations") or {}).get("total_s")
    if total is not None:
        parts.append(f"{total:.1f}s")
    overrides = summary.get("overrides")
    if overrides:
        parts.append(" ".join(overrides))
    return "  ".join(parts)


class ConsoleProgress:
    """Training callback: the live bar (terminal only) and the per-epoch summary line."""

    def __init__(
        self,
        epochs: int,
        batch_size: int,
        n_train: int,
        quiet: bool = False,
        console=None,
        refresh_s: float = 0.25,
        plain_every_s: float = 30.0,
    ):
        from rich.console import Console

        self.epochs, self.batch_size, self.n_train = epochs, batch_size, n_train
        self.console = console if console is not None else Console(stderr=True)
        interactive = self.console.is_terminal and not self.console.is_dumb_terminal
        self.live = not quiet and interactive  # a redrawn bar
        self.plain = not quiet and not interactive  # occasional plain step lines
        self.refresh_s, self.plain_every_s = refresh_s, plain_every_s
        self._bar = None
        self._task = None
        self._t_epoch = 0.0
        self._next_draw = 0.0
        self._last_val_acc: float | None = None

    # ------------------------------------------------------------------ hooks the loop calls

    def on_batch_end(self, state: TrainState, step: int, n_steps: int, losses: torch.Tensor) -> None:
        """After optimizer step ``step`` (1-based) of ``n_steps``; ``losses`` holds steps 1..step."""
        if not (self.live or self.plain):
            return
        now = time.perf_counter()
        if step == 1:
            self._t_epoch = now
            self._next_draw = now + (self.refresh_s if self.live else self.plain_every_s)
            if self.live:
                self._start_bar(state, n_steps)
        last = step == n_steps
        if now < self._next_draw and not last:
            return  # the common case: nothing to do, nothing read from the device
        self._next_draw = now + (self.refresh_s if self.live else self.plain_every_s)
        stats = self._stats(state, step, losses, now)
        if self.live:
            self._bar.update(self._task, completed=step, stats=stats)
            if last:
                self._stop_bar()
        elif not last:
            log.info("epoch %d/%d  step %d/%d  %s", state.epoch + 1, self.epochs, step, n_steps, stats)

    def on_epoch_end(self, result: EpochResult, state: TrainState) -> None:
        self._stop_bar()
        self._last_val_acc = result.val_acc
        log.info("%s", epoch_line(result, self.epochs))

    def on_run_end(self, summary: dict[str, Any]) -> None:
        self._stop_bar()
        log.info("%s", run_line(summary))

    # ------------------------------------------------------------------ the bar

    def _stats(self, state: TrainState, step: int, losses: torch.Tensor, now: float) -> str:
        loss = float(losses.mean())  # the one device read, once per redraw
        lr = state.optimizer.param_groups[0]["lr"]
        elapsed = now - self._t_epoch
        seen = min(step * self.batch_size, self.n_train) - self.batch_size  # the clock starts after step 1
        speed = f"{seen / elapsed:,.0f} img/s" if elapsed > 0 and step > 1 else "- img/s"
        acc = f"val_acc {self._last_val_acc:.4f}" if self._last_val_acc is not None else "val_acc -"
        return f"loss {loss:.4f}  {acc}  lr {lr:.3g}  {speed}"

    def _start_bar(self, state: TrainState, n_steps: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._stop_bar()
        self._bar = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=self.console,
            transient=True,  # the epoch line replaces the bar
        )
        self._task = self._bar.add_task(
            "train", total=n_steps, epoch=f"{state.epoch + 1}/{self.epochs}", stats="loss -"
        )
        self._bar.start()

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
