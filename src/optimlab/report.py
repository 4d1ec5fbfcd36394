"""Summarize a multirun folder: one table row per run, sorted by the objective.

    uv run python -m optimlab.report multirun/2025-01-01/12-00-00_ab12cd
    optimlab-report                      # the newest folder under ./multirun

Reads run folders only (``summary.json``, ``metrics.csv``, ``.hydra/``), so it works
for grid multiruns (job folders ``0``, ``1``, ...), Optuna sweeps (``trial_NNNN`` or job
folders) and folders still being written: a run without a summary yet is shown as
``incomplete``, a running one with its best epoch so far. Writes ``report.csv`` and
``report.png`` (validation curves of the top runs) into the folder (or ``--out``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import shlex
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from optimlab.plots import plot_comparison, read_metrics

REPORT_CSV = "report.csv"
REPORT_PNG = "report.png"
MARKERS = ("summary.json", "metrics.csv", ".hydra/overrides.yaml")
FINAL_STATES = ("completed", "diverged", "pruned", "failed", "interrupted", "invalid_config")


@dataclass
class Run:
    """What the report knows about one run folder."""

    name: str
    path: Path
    status: str
    overrides: list[str]
    params: dict[str, str]
    metric: str
    direction: str
    value: float | None  # the objective: best `metric` over epochs (so far)
    best_epoch: int | None
    best: dict[str, float]
    final: dict[str, float]
    test: dict[str, float]
    epochs_done: int
    epochs: int | None
    duration_s: float | None
    error: str | None
    rows: list[dict[str, float]] = field(repr=False, default_factory=list)


# --------------------------------------------------------------------------- reading


def natural_key(text: str) -> list:
    """``trial_2`` before ``trial_10``, ``9`` before ``10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def find_runs(root: Path) -> list[Path]:
    """Run folders at or under ``root`` (any folder holding one of the run files)."""
    if any((root / m).exists() for m in MARKERS):
        return [root]
    found: set[Path] = set()
    for marker in MARKERS:
        for hit in root.rglob(marker):
            folder = hit.parent.parent if marker.startswith(".hydra/") else hit.parent
            found.add(folder)
    return sorted(found, key=lambda p: natural_key(str(p.relative_to(root))))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing, or caught mid-write by an older writer
    return data if isinstance(data, dict) else None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    params = {}
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if sep and not key.lstrip("+~").startswith("hydra."):
            params[key.lstrip("+~")] = value
    return params


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def read_run(path: Path, root: Path) -> Run:
    summary = _read_json(path / "summary.json") or {}
    config = _read_yaml(path / ".hydra" / "config.yaml") or {}
    rows = read_metrics(path / "metrics.csv")

    overrides = summary.get("overrides")
    if overrides is None:
        overrides = _read_yaml(path / ".hydra" / "overrides.yaml") or []
    overrides = [str(o) for o in overrides]

    objective = summary.get("objective") or config.get("objective") or {}
    metric = objective.get("metric", "val_acc")
    direction = objective.get("direction", "maximize")

    status = summary.get("status") or "incomplete"
    epochs = config.get("epochs")
    durations = summary.get("durations") or {}
    duration = _finite(durations.get("total_s"))
    if duration is None and rows:
        duration = sum(r.get("seconds", 0.0) for r in rows)  # epochs so far
    name = str(path.relative_to(root)) if path != root else path.name
    run = Run(
        name=name, path=path, status=status, overrides=overrides, params=parse_overrides(overrides),
        metric=metric, direction=direction, value=None, best_epoch=None, best={}, final=rows[-1] if rows else {},
        test=summary.get("test") or {}, epochs_done=len(rows), epochs=epochs if isinstance(epochs, int) else None,
        duration_s=duration, error=summary.get("error"), rows=rows,
    )  # fmt: skip
    score(run, metric, direction, summary)
    return run


def score(run: Run, metric: str, direction: str, summary: dict[str, Any] | None = None) -> None:
    """Set the run's objective (best ``metric`` over its epochs) and its best row."""
    objective = (summary or {}).get("objective") or {}
    if objective.get("metric") == metric and objective.get("best_epoch") is not None:
        run.value = _finite(objective.get("value"))
        run.best_epoch = int(objective["best_epoch"])
        run.best = (summary or {}).get("best") or next((r for r in run.rows if r["epoch"] == run.best_epoch), {})
        return
    finite = [r for r in run.rows if _finite(r.get(metric)) is not None]
    if not finite:
        run.value, run.best_epoch, run.best = None, None, {}
        return
    pick = max if direction == "maximize" else min
    run.best = pick(finite, key=lambda r: r[metric])
    run.value, run.best_epoch = run.best[metric], int(run.best["epoch"])


def collect(root: Path) -> tuple[list[Run], str, str]:
    """All runs under ``root``, best first; and the objective (metric, direction) they share."""
    runs = [read_run(p, root) for p in find_runs(root)]
    if not runs:
        return [], "val_acc", "maximize"
    metric, direction = Counter((r.metric, r.direction) for r in runs).most_common(1)[0][0]
    for run in runs:
        if (run.metric, run.direction) != (metric, direction):
            score(run, metric, direction)  # rank every run by the same yardstick
    sign = -1.0 if direction == "maximize" else 1.0
    # ties (several runs at val_acc 1.0) go to the better other metric at the best epoch
    other, other_sign = ("val_loss", 1.0) if metric != "val_loss" else ("val_acc", -1.0)

    def order(r: Run):
        tie = _finite(r.best.get(other))
        return (
            r.value is None,
            sign * r.value if r.value is not None else 0.0,
            other_sign * tie if tie is not None else math.inf,
            natural_key(r.name),
        )

    runs.sort(key=order)
    return runs, metric, direction


def varying(runs: list[Run]) -> tuple[list[str], dict[str, str]]:
    """Override keys whose value differs between runs, and the ones all runs share."""
    known = [run for run in runs if run.params]  # a folder Hydra just made may not say yet
    keys: list[str] = []
    for run in known:
        keys += [k for k in run.params if k not in keys]
    common = {}
    changing = []
    for key in keys:
        values = {run.params.get(key) for run in known}
        if len(values) == 1 and len(known) > 1:
            common[key] = values.pop()
        else:
            changing.append(key)
    return changing, common


# --------------------------------------------------------------------------- writing


def _num(x: Any, digits: int = 4) -> str:
    x = _finite(x)
    return "-" if x is None else f"{x:.{digits}f}"


def _param(text: str | None) -> str:
    if text is None:
        return "-"
    try:
        value = float(text)
    except ValueError:
        return text
    return text if value.is_integer() and "e" not in text.lower() else f"{value:.4g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def table(runs: list[Run], metric: str, params: list[str]) -> list[list[str]]:
    header = ["#", "run", *params, "status", f"best {metric}", "epoch", "final val_acc", "final val_loss",
              "test_acc", "epochs", "time"]  # fmt: skip
    body = []
    for rank, run in enumerate(runs, 1):
        epochs = f"{run.epochs_done}/{run.epochs}" if run.epochs else str(run.epochs_done)
        body.append([
            str(rank), run.name, *(_param(run.params.get(k)) for k in params), run.status,
            _num(run.value), str(run.best_epoch or "-"), _num(run.final.get("val_acc")),
            _num(run.final.get("val_loss")), _num(run.test.get("acc")), epochs, _duration(run.duration_s),
        ])  # fmt: skip
    return [header, *body]


def render(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    numeric = [all(_finite(r[i]) is not None or r[i] == "-" for r in rows[1:]) for i in range(len(widths))]

    def line(cells: list[str]) -> str:
        out = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
        return "  ".join(out).rstrip()

    return "\n".join([line(rows[0]), "  ".join("-" * w for w in widths), *(line(r) for r in rows[1:])])


CSV_FIXED = [
    "rank", "run", "status", "objective_metric", "objective_direction", "objective_value", "best_epoch",
    "best_train_loss", "best_val_loss", "best_val_acc", "final_epoch", "final_lr", "final_train_loss",
    "final_val_loss", "final_val_acc", "test_loss", "test_acc", "epochs_completed", "epochs", "duration_s",
    "overrides", "path", "error",
]  # fmt: skip


def write_csv(runs: list[Run], metric: str, direction: str, path: Path) -> Path:
    from optimlab.rundir import atomic_write_text

    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.params if k not in keys]
    columns = CSV_FIXED[:3] + [f"param.{k}" for k in keys] + CSV_FIXED[3:]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for rank, run in enumerate(runs, 1):
        row: dict[str, Any] = {
            "rank": rank, "run": run.name, "status": run.status,
            "objective_metric": metric, "objective_direction": direction, "objective_value": run.value,
            "best_epoch": run.best_epoch, "epochs_completed": run.epochs_done, "epochs": run.epochs,
            "duration_s": run.duration_s, "overrides": shlex.join(run.overrides), "path": str(run.path),
            "error": run.error,
            "test_loss": run.test.get("loss"), "test_acc": run.test.get("acc"),
        }  # fmt: skip
        for k in ("train_loss", "val_loss", "val_acc"):
            row[f"best_{k}"] = run.best.get(k)
        for k in ("epoch", "lr", "train_loss", "val_loss", "val_acc"):
            row[f"final_{k}"] = run.final.get(k)
        for k in keys:
            row[f"param.{k}"] = run.params.get(k)
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())
    return path


def write_plot(runs: list[Run], metric: str, params: list[str], path: Path, top: int, title: str) -> Path | None:
    shown = [r for r in runs if r.rows][:top]
    if not shown:
        return None
    curves = []
    for run in shown:
        label = " ".join(f"{k}={_param(run.params.get(k))}" for k in params) or run.name
        label = label if len(label) <= 60 else label[:57] + "..."
        value = f"{run.value:.4f}" if run.value is not None else "-"
        curves.append({"label": f"{label}  ({value}{'' if run.status == 'completed' else ', ' + run.status})",
                       "rows": run.rows})  # fmt: skip
    return plot_comparison(curves, path, metric=metric, title=title)


def latest_multirun(base: Path = Path("multirun")) -> Path | None:
    sweeps = [p for p in base.glob("*/*") if p.is_dir()]
    return max(sweeps, key=lambda p: p.stat().st_mtime) if sweeps else None


def report(root: Path, out: Path | None = None, top: int = 8, plot: bool = True) -> str:
    """Build the report of ``root``; writes report.csv (and report.png); returns the text."""
    runs, metric, direction = collect(root)
    if not runs:
        return f"no run folders under {root}"
    out = out or root
    out.mkdir(parents=True, exist_ok=True)
    params, common = varying(runs)
    states = Counter(r.status for r in runs)
    lines = [
        f"{root}: {len(runs)} runs ({', '.join(f'{n} {s}' for s, n in states.most_common())}); "
        f"sorted by best {metric} ({direction})",
    ]
    if common:
        lines.append("common overrides: " + " ".join(f"{k}={v}" for k, v in common.items()))
    lines += ["", render(table(runs, metric, params)), ""]
    written = [write_csv(runs, metric, direction, out / REPORT_CSV)]
    if plot:
        drawn = min(top, sum(1 for r in runs if r.rows))  # runs without a finished epoch have no curve
        title = f"{root.name}: top {drawn} of {len(runs)} runs by best {metric}"
        png = write_plot(runs, metric, params, out / REPORT_PNG, top, title)
        if png:
            written.append(png)
    best = runs[0]
    if best.value is not None:
        lines.append(f"best: {best.name} ({metric} {best.value:.4f}); again: python train.py {shlex.join(best.overrides)}")
    lines.append("wrote " + ", ".join(str(p) for p in written))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="optimlab-report", description="Table, report.csv and report.png of a multirun (sweep) folder."
    )
    parser.add_argument("folder", nargs="?", type=Path, help="multirun folder (default: the newest under ./multirun)")
    parser.add_argument("--top", type=int, default=8, help="runs drawn in report.png (default 8)")
    parser.add_argument("--out", type=Path, help="where report.csv/report.png go (default: the folder)")
    parser.add_argument("--no-plot", action="store_true", help="skip report.png")
    args = parser.parse_args(argv)

    folder = args.folder or latest_multirun()
    if folder is None:
        parser.error("no folder given and none under ./multirun")
    if not folder.is_dir():
        parser.error(f"{folder} is not a folder")
    text = report(folder, out=args.out, top=args.top, plot=not args.no_plot)
    print(text)
    return 0 if not text.startswith("no run folders") else 1


if __name__ == "__main__":
    sys.exit(main())
