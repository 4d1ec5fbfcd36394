"""PNG plots: ``curves.png`` of one run, and the comparison plot of a multirun's top runs.

matplotlib's object API with the Agg canvas (no pyplot, no display needed); imported
lazily, since it takes a second or two to import.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from optimlab.engine.metrics import TRAIN_LOSS, VAL_ACC, VAL_LOSS
from optimlab.engine.training import EpochResult, TrainState
from optimlab.files import atomic_write_bytes

CURVES_FILE = "curves.png"


def _figure(width: float, height: float, ncols: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())  # a viewer never sees half a PNG
    return path


def _column(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(r["epoch"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _marker(n: int) -> str | None:
    return "o" if n <= 30 else None  # single epochs stay visible


def _loss_scale(ax, values: list[float]) -> None:
    """Log scale when losses span decades (one exploding run must not flatten the rest)."""
    if values and min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")


def _epoch_axis(ax, epochs: list[float]) -> None:
    """Whole-number epoch ticks; a word instead of empty axes."""
    ax.grid(alpha=0.3)
    if not epochs:
        ax.text(0.5, 0.5, "no finished epoch", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    ax.xaxis.get_major_locator().set_params(integer=True)
    lo, hi = min(epochs), max(epochs)
    if hi - lo < 2:  # one or two epochs: no 0.96 ... 1.04 ticks
        ax.set_xlim(lo - 0.5, hi + 0.5)
        ax.set_xticks(sorted(set(epochs)))


def plot_curves(rows: Sequence[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Loss (train and val), validation accuracy and lr against epoch, side by side."""
    rows = list(rows)
    fig, (ax_loss, ax_acc, ax_lr) = _figure(12, 3.4, 3)
    m = _marker(len(rows))
    losses = []
    for key, label in ((TRAIN_LOSS, "train"), (VAL_LOSS, "val")):
        x, y = _column(rows, key)
        ax_loss.plot(x, y, marker=m, ms=3, label=label)
        losses += y
    _loss_scale(ax_loss, losses)
    ax_loss.set(title="loss", xlabel="epoch")
    if losses:
        ax_loss.legend(frameon=False)

    x, y = _column(rows, VAL_ACC)
    ax_acc.plot(x, y, marker=m, ms=3, color="C2")
    if y:
        best = max(range(len(y)), key=y.__getitem__)
        ax_acc.plot([x[best]], [y[best]], marker="*", ms=11, color="C2", mec="black", mew=0.6, ls="none")
        ax_acc.text(
            0.97, 0.05, f"best {y[best]:.4f} at epoch {x[best]:g}", transform=ax_acc.transAxes,
            ha="right", va="bottom", fontsize=9, bbox={"boxstyle": "round", "fc": "white", "ec": "0.8"},
        )  # fmt: skip
    ax_acc.set(title="validation accuracy", xlabel="epoch")

    x, y = _column(rows, "lr")
    ax_lr.plot(x, y, marker=m, ms=3, color="C3", drawstyle="steps-post" if len(x) > 1 else "default")
    if y:  # linear from 0: a constant lr is a flat line, a cosine looks like one
        ax_lr.set_ylim(0, max(y) * 1.15 or 1)
        ax_lr.yaxis.set_major_formatter("{x:g}")
    ax_lr.set(title="learning rate (at epoch start)", xlabel="epoch")

    for ax in (ax_loss, ax_acc, ax_lr):
        _epoch_axis(ax, [r["epoch"] for r in rows])
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))


def plot_comparison(
    runs: Sequence[dict[str, Any]], path: str | Path, metric: str = VAL_ACC, title: str = ""
) -> Path:
    """Validation accuracy (left) and loss (right) against epoch, one line per run.

    ``runs``: dicts with ``label`` and ``rows`` (metrics.csv rows), best run first.
    """
    fig, (ax_acc, ax_loss) = _figure(12, 4.2, 2)
    losses = []
    for i, run in enumerate(runs):
        rows = run["rows"]
        style = {"lw": 2.4 if i == 0 else 1.3, "marker": _marker(len(rows)), "ms": 3, "color": f"C{i % 10}"}
        x, y = _column(rows, VAL_ACC)
        ax_acc.plot(x, y, label=run["label"], **style)
        x, y = _column(rows, VAL_LOSS)
        ax_loss.plot(x, y, **style)
        losses += y
    _loss_scale(ax_loss, losses)
    ax_acc.set(title="validation accuracy", xlabel="epoch")
    ax_loss.set(title="validation loss", xlabel="epoch")
    epochs = [r["epoch"] for run in runs for r in run["rows"]]
    for ax in (ax_acc, ax_loss):
        _epoch_axis(ax, epochs)
    if runs:
        fig.legend(loc="outside right upper", fontsize=8, frameon=False, title=f"best first (by {metric})")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))


class CurvesPlotter:
    """Training callback: writes curves.png at the end of the run, and after epochs when cheap.

    A redraw takes a fraction of a second; it is done after an epoch only if the epoch
    took at least ``ratio`` times as long as the last redraw, so tiny epochs are not
    slowed down and long ones get a live picture.
    """

    def __init__(self, folder: str | Path, title: str = "", ratio: float = 20.0):
        self.path = Path(folder) / CURVES_FILE
        self.title, self.ratio = title, ratio
        self.rows: list[dict[str, float]] = []
        self.last_draw_s: float | None = None

    def draw(self) -> None:
        t0 = time.perf_counter()
        plot_curves(self.rows, self.path, self.title)
        self.last_draw_s = time.perf_counter() - t0

    def on_epoch_end(self, result: EpochResult, state: TrainState) -> None:
        self.rows = [r.as_row() for r in state.history]
        if self.last_draw_s is not None and result.seconds >= self.ratio * self.last_draw_s:
            self.draw()
        elif self.last_draw_s is None and result.seconds >= 10.0:  # first draw includes the import
            self.draw()

    def on_run_end(self, summary: dict[str, Any]) -> None:
        if summary.get("status"):
            self.title = f"{self.title}  [{summary['status']}]" if self.title else f"[{summary['status']}]"
        self.draw()
