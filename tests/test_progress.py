"""Console progress: a live bar on terminals, plain lines elsewhere, nothing extra when quiet."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, train_cli
from rich.console import Console

from optimlab.observe.progress import ConsoleProgress
from optimlab.engine.training import EpochResult, TrainState


class CountingLosses:
    """Stands in for the loop's detached loss tensor and counts how often it is read."""

    def __init__(self):
        self.reads = 0

    def mean(self):
        self.reads += 1
        return torch.tensor(0.5)


def state(epoch: int = 0) -> TrainState:
    # the bar reads only the optimizer's lr (a real torch.optim import costs seconds)
    return TrainState(None, SimpleNamespace(param_groups=[{"lr": 0.05}]), None, None, epoch=epoch)


def result(epoch: int) -> EpochResult:
    return EpochResult(epoch, 0.05, 0.7, 0.6, 0.75, 1.5, 1234.0)


def drive(progress: ConsoleProgress, n_steps: int, losses=None) -> CountingLosses:
    losses = losses or CountingLosses()
    s = state()
    for step in range(1, n_steps + 1):
        progress.on_batch_end(s, step, n_steps, losses)
    s.epoch = 1
    progress.on_epoch_end(result(1), s)
    return losses


def test_terminal_gets_a_bar_with_loss_lr_and_speed(caplog):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    progress = ConsoleProgress(epochs=3, batch_size=32, n_train=320, console=console, refresh_s=0.0)
    with caplog.at_level(logging.INFO, logger="optimlab.observe.progress"):
        drive(progress, 10)
    text = out.getvalue()
    assert "epoch 1/3" in text and "10/10" in text
    assert "loss 0.5000" in text and "lr 0.05" in text and "img/s" in text
    # the epoch summary line goes to the log (and so to train.log)
    assert any("epoch 1/3" in r.message and "val_acc 0.7500" in r.message for r in caplog.records)


def test_bar_reads_the_loss_only_when_it_redraws():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    progress = ConsoleProgress(epochs=1, batch_size=32, n_train=32 * 2000, console=console, refresh_s=60.0)
    losses = drive(progress, 2000)
    assert losses.reads == 1  # the last step only: no device sync per step


def test_not_a_terminal_plain_lines_without_carriage_returns(caplog):
    out = io.StringIO()
    console = Console(file=out)  # a file: not a terminal
    assert not console.is_terminal
    progress = ConsoleProgress(epochs=2, batch_size=32, n_train=320, console=console, plain_every_s=0.0)
    with caplog.at_level(logging.INFO, logger="optimlab.observe.progress"):
        drive(progress, 10)
    assert out.getvalue() == ""  # no bar at all
    steps = [r.message for r in caplog.records if "step" in r.message]
    assert steps and all("\r" not in m for m in steps)
    assert steps[0].startswith("epoch 1/2  step 1/10  loss 0.5000  val_acc -  lr 0.05")


def test_quiet_draws_nothing(caplog):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True)
    progress = ConsoleProgress(epochs=2, batch_size=32, n_train=320, console=console, quiet=True, plain_every_s=0.0)
    with caplog.at_level(logging.INFO, logger="optimlab.observe.progress"):
        losses = drive(progress, 10)
    assert out.getvalue() == "" and losses.reads == 0
    assert [r.message for r in caplog.records if "step" in r.message] == []
    assert any(r.message.startswith("epoch 1/2") for r in caplog.records)  # the epoch line stays


@pytest.mark.slow
def test_train_py_piped_output_has_no_carriage_return_spam(tmp_path):
    args = [o for o in TINY if not o.startswith(("epochs=", "quiet="))]
    proc = train_cli(*args, "epochs=1", "quiet=false", "model=lenet", "data.image_size=16", "data.channels=1",
                     cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    both = proc.stdout + proc.stderr
    assert "\r" not in both and "\x1b[" not in both  # no redraws, no cursor codes
    assert "epoch 1/1" in both and "run completed" in both
    log_file = next(tmp_path.glob("outputs/*/*/train.log")).read_text()
    assert "epoch 1/1" in log_file and "run completed" in log_file


def test_run_line_for_finished_and_diverged_runs():
    from optimlab.observe.progress import run_line

    done = {"status": "completed", "objective": {"metric": "val_acc", "value": 0.9653, "best_epoch": 7},
            "test": {"acc": 0.95, "loss": 0.2}, "durations": {"total_s": 28.3}, "overrides": ["lr=0.01"]}  # fmt: skip
    assert run_line(done) == "run completed  val_acc 0.9653 (best, epoch 7)  test_acc 0.9500  28.3s  lr=0.01"
    done["test"].update(weights="best", epoch=7)  # which weights the test figure is from, when recorded
    assert run_line(done) == ("run completed  val_acc 0.9653 (best, epoch 7)  test_acc 0.9500 (best epoch 7 weights)  "
                              "28.3s  lr=0.01")
    diverged = {"status": "diverged", "objective": {"metric": "val_acc", "value": float("nan"), "best_epoch": None},
                "durations": {"total_s": 9.5}, "overrides": ["lr=0.1"]}  # fmt: skip
    assert run_line(diverged) == "run diverged  9.5s  lr=0.1"
