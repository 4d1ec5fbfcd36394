"""Summarize a multirun folder: one table row per run, sorted by the objective.

    uv run python -m optimlab.report multirun/2025-01-01/12-00-00_ab12cd
    optimlab-report                      # the newest sweep folder under ./multirun

Reads run folders only (``summary.json``, ``metrics.csv``, ``.hydra/``), so it works
for grid multiruns (job folders ``0``, ``1``, ...), Optuna sweeps (``trial_NNNN`` or job
folders) and folders still being written: a run without a summary yet is shown as
``incomplete``, a running one with its best epoch so far. Writes ``report.csv`` and
``report.png`` (validation curves of the top runs) into the folder (or ``--out``).
Runs with several objectives (``objective.metrics``) are marked ``*`` when Pareto-optimal
among the runs and listed first, each group by the first objective.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
import shlex
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimlab import objective as objectives
from optimlab.config import default_objective
from optimlab.config import overrides as ovr
from optimlab.engine.metrics import SECONDS, VAL_ACC, VAL_LOSS
from optimlab.files import atomic_write_text
from optimlab.observe.plots import plot_comparison
from optimlab.observe.tables import render
from optimlab.run.folder import RunFolder, is_sweep_folder, run_folders_under

REPORT_CSV = "report.csv"
REPORT_PNG = "report.png"


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
    test: dict[str, Any]  # loss, acc, and the weights they come from (weights: best | last, epoch)
    epochs_done: int
    epochs: int | None
    duration_s: float | None
    error: str | None
    rows: list[dict[str, float]] = field(repr=False, default_factory=list)
    # several objectives: their names, directions and this run's values (None: none yet)
    metrics: tuple[str, ...] = ()
    directions: tuple[str, ...] = ()
    values: list[float] | None = None
    pareto: bool = False


# --------------------------------------------------------------------------- reading


def natural_key(text: str) -> list:
    """``trial_2`` before ``trial_10``, ``9`` before ``10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def find_runs(root: Path) -> list[Path]:
    """Run folders at or under ``root``, in natural order."""
    return sorted(run_folders_under(root), key=lambda p: natural_key(str(p.relative_to(root))))


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _hydra_config(folder: RunFolder) -> dict[str, Any]:
    try:
        from omegaconf import OmegaConf

        cfg = folder.hydra_config()
        return OmegaConf.to_container(cfg, resolve=False) if cfg is not None else {}
    except Exception:  # noqa: BLE001 - a live folder may be caught mid-write
        return {}


def read_run(path: Path, root: Path) -> Run:
    folder = RunFolder(path, create=False)
    summary = folder.summary()
    config = _hydra_config(folder)
    rows = folder.read_metrics()
    overrides = folder.overrides()

    objective = {**default_objective(), **(summary.get("objective") or config.get("objective") or {})}
    metric, direction = objective["metric"], objective["direction"]

    status = summary.get("status") or "incomplete"
    epochs = config.get("epochs")
    durations = summary.get("durations") or {}
    duration = _finite(durations.get("total_s"))
    if duration is None and rows:
        duration = sum(r.get(SECONDS, 0.0) for r in rows)  # epochs so far
    name = str(path.relative_to(root)) if path != root else path.name
    run = Run(
        name=name, path=path, status=status, overrides=overrides, params=ovr.job_values(overrides),
        metric=metric, direction=direction, value=None, best_epoch=None, best={}, final=rows[-1] if rows else {},
        test=summary.get("test") or {}, epochs_done=len(rows), epochs=epochs if isinstance(epochs, int) else None,
        duration_s=duration, error=summary.get("error"), rows=rows,
    )  # fmt: skip
    score(run, metric, direction, summary)
    metrics, directions = objectives.targets(objective)
    if len(metrics) > 1:
        run.metrics, run.directions = tuple(metrics), tuple(directions)
        values = objective.get("values")
        run.values = [_finite(v) for v in values] if values is not None else None
    return run


def score(run: Run, metric: str, direction: str, summary: dict[str, Any] | None = None) -> None:
    """Set the run's objective (best ``metric`` over its epochs) and its best row."""
    objective = (summary or {}).get("objective") or {}
    if objective.get("metric") == metric and objective.get("best_epoch") is not None:
        run.value = _finite(objective.get("value"))
        run.best_epoch = int(objective["best_epoch"])
        run.best = (summary or {}).get("best") or next((r for r in run.rows if r["epoch"] == run.best_epoch), {})
        return
    best = objectives.best(run.rows, lambda r: r.get(metric), direction)
    if best is None:
        run.value, run.best_epoch, run.best = None, None, {}
        return
    run.best, run.value, run.best_epoch = best, best[metric], int(best["epoch"])


def collect(root: Path) -> tuple[list[Run], str, str]:
    """All runs under ``root``, best first; and the objective (metric, direction) they share."""
    runs = [read_run(p, root) for p in find_runs(root)]
    if not runs:
        return [], default_objective()["metric"], default_objective()["direction"]
    several = Counter((r.metrics, r.directions) for r in runs).most_common(1)[0][0]
    if several[0]:
        return sort_pareto(runs, *several), several[0][0], several[1][0]
    metric, direction = Counter((r.metric, r.direction) for r in runs).most_common(1)[0][0]
    for run in runs:
        if (run.metric, run.direction) != (metric, direction):
            score(run, metric, direction)  # rank every run by the same yardstick
    # ties go to the earliest run (trial number, job number): the sweeper's one rule
    def order(r: Run):
        return objectives.trial_order(r.value, natural_key(r.name), direction)

    runs.sort(key=order)
    return runs, metric, direction


def best_run(runs: list[Run], direction: str) -> Run | None:
    """The best completed run, by the sweeper's rule (:func:`optimlab.objective.best_trial`:
    best value, ties to the earliest trial); a pruned or failed run is never the best."""
    done = [r for r in runs if r.status == "completed"]
    return objectives.best_trial(done, lambda r: r.value, lambda r: natural_key(r.name), direction)


def sort_pareto(runs: list[Run], metrics: tuple[str, ...], directions: tuple[str, ...]) -> list[Run]:
    """Mark the Pareto-optimal runs (several objectives); they come first, then the others,
    each group by the first objective. Runs of other objectives are never optimal."""
    points = [r.values if r.metrics == metrics else None for r in runs]
    for run, optimal in zip(runs, objectives.pareto(points, directions)):
        run.pareto = optimal
    first = lambda r: r.values[0] if r.values and r.metrics == metrics else None  # noqa: E731
    return sorted(runs, key=lambda r: (not r.pareto, objectives.rank_key(first(r), directions[0]), natural_key(r.name)))


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


def _objective_value(metric: str, x: Any) -> str:
    return _num(x, 0) if metric == "n_parameters" else _num(x)


def table(runs: list[Run], metric: str, params: list[str], metrics: tuple[str, ...] = ()) -> str:
    """The runs, one row each; ``metrics``: several objectives (a Pareto column and one per objective)."""
    goal = ["pareto", *metrics] if metrics else [f"best {metric}", "epoch"]
    header = ["#", "run", *params, "status", *goal, "final val_acc", "final val_loss", "test_acc", "test weights",
              "epochs", "time"]  # fmt: skip
    body = []
    for rank, run in enumerate(runs, 1):
        epochs = f"{run.epochs_done}/{run.epochs}" if run.epochs else str(run.epochs_done)
        if metrics:
            values = run.values if run.values and run.metrics == metrics else [None] * len(metrics)
            shown = ["*" if run.pareto else "", *(_objective_value(m, v) for m, v in zip(metrics, values))]
        else:
            shown = [_num(run.value), str(run.best_epoch or "-")]
        body.append([
            str(rank), run.name, *(_param(run.params.get(k)) for k in params), run.status, *shown,
            _num(run.final.get(VAL_ACC)), _num(run.final.get(VAL_LOSS)), _num(run.test.get("acc")),
            test_weights(run.test), epochs, _duration(run.duration_s),
        ])  # fmt: skip
    numeric = [all(_finite(r[i]) is not None or r[i] == "-" for r in body) for i in range(len(header))]
    return render(header, body, numeric)


def test_weights(test: dict[str, Any]) -> str:
    """Which weights the test figure comes from: ``best@3`` (best epoch 3), ``last@10``; ``-``: not recorded."""
    return f"{test['weights']}@{test.get('epoch')}" if test.get("weights") else "-"


FINAL_COLUMNS = ("epoch", "lr", *objectives.EPOCH_METRICS)  # the last epoch's row, as metrics.csv names it
CSV_FIXED = [
    "rank", "run", "status", "objective_metric", "objective_direction", "objective_value", "best_epoch",
    *(f"best_{k}" for k in objectives.EPOCH_METRICS), *(f"final_{k}" for k in FINAL_COLUMNS),
    "test_loss", "test_acc", "test_weights", "test_epoch", "epochs_completed", "epochs", "duration_s", "overrides", "path", "error",
]  # fmt: skip


def write_csv(runs: list[Run], metric: str, direction: str, path: Path) -> Path:
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.params if k not in keys]
    metrics = next((r.metrics for r in runs if r.metrics), ())
    several = ["pareto", *(f"objective.{m}" for m in metrics)] if metrics else []
    columns = CSV_FIXED[:3] + [f"param.{k}" for k in keys] + CSV_FIXED[3:6] + several + CSV_FIXED[6:]
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
            "test_weights": run.test.get("weights"), "test_epoch": run.test.get("epoch"),
        }  # fmt: skip
        for k in objectives.EPOCH_METRICS:
            row[f"best_{k}"] = run.best.get(k)
        for k in FINAL_COLUMNS:
            row[f"final_{k}"] = run.final.get(k)
        for k in keys:
            row[f"param.{k}"] = run.params.get(k)
        if metrics:
            row["pareto"] = run.pareto
            values = run.values if run.values and run.metrics == metrics else [None] * len(metrics)
            row.update({f"objective.{m}": v for m, v in zip(metrics, values)})
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
        if run.metrics:
            value = ", ".join(_objective_value(m, v) for m, v in zip(run.metrics, run.values or [None] * len(run.metrics)))
            value += " *" if run.pareto else ""
        else:
            value = f"{run.value:.4f}" if run.value is not None else "-"
        curves.append({"label": f"{label}  ({value}{'' if run.status == 'completed' else ', ' + run.status})",
                       "rows": run.rows})  # fmt: skip
    return plot_comparison(curves, path, metric=metric, title=title)


def latest_multirun(base: Path = Path("multirun")) -> Path | None:
    """The newest sweep folder under ``base`` (``multirun/<date>/<time>``, or a preset's
    ``multirun/<study>``), never one of its job folders (``…/trial_0007``): by the time its
    newest run folder was last written."""
    sweeps = [p for p in (*base.glob("*"), *base.glob("*/*")) if is_sweep_folder(p)]

    def newest(sweep: Path) -> float:
        return max((p.stat().st_mtime for p in (sweep, *run_folders_under(sweep))), default=0.0)

    return max(sweeps, key=newest) if sweeps else None


def report(root: Path, out: Path | None = None, top: int = 8, plot: bool = True) -> str:
    """Build the report of ``root``; writes report.csv (and report.png); returns the text."""
    runs, metric, direction = collect(root)
    if not runs:
        return f"no run folders under {root}"
    out = out or root
    out.mkdir(parents=True, exist_ok=True)
    params, common = varying(runs)
    states = Counter(r.status for r in runs)
    metrics, directions = runs[0].metrics, runs[0].directions
    order = (
        f"Pareto-optimal runs (*) first for {', '.join(f'{m} ({d})' for m, d in zip(metrics, directions))}, "
        f"then by {metrics[0]}" if metrics else f"sorted by best {metric} ({direction})"
    )  # fmt: skip
    lines = [f"{root}: {len(runs)} runs ({', '.join(f'{n} {s}' for s, n in states.most_common())}); {order}"]
    if common:
        lines.append("common overrides: " + " ".join(f"{k}={v}" for k, v in common.items()))
    lines += ["", table(runs, metric, params, metrics), ""]
    written = [write_csv(runs, metric, direction, out / REPORT_CSV)]
    if plot:
        drawn = min(top, sum(1 for r in runs if r.rows))  # runs without a finished epoch have no curve
        by = "Pareto-optimal first" if metrics else f"best {metric}"
        title = f"{root.name}: top {drawn} of {len(runs)} runs by {by}"
        png = write_plot(runs, "Pareto front" if metrics else metric, params, out / REPORT_PNG, top, title)
        if png:
            written.append(png)
    best = best_run(runs, direction)
    front = [r for r in runs if r.pareto]
    if metrics:
        lines.append(f"Pareto-optimal: {len(front)} of {len(runs)} runs: {', '.join(r.name for r in front) or '-'}")
        for run in front[:top]:
            lines.append(f"  {run.name}: again: python train.py {shlex.join(run.overrides)}")
    elif best is not None:
        lines.append(f"best: {best.name} ({metric} {best.value:.4f}); again: python train.py {shlex.join(best.overrides)}")
    lines.append("wrote " + ", ".join(str(p) for p in written))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="optimlab-report", description="Table, report.csv and report.png of a multirun (sweep) folder."
    )
    parser.add_argument("folder", nargs="?", type=Path, help="multirun folder (default: the newest sweep folder under ./multirun)")
    parser.add_argument("--top", type=int, default=8, help="runs drawn in report.png (default 8)")
    parser.add_argument("--out", type=Path, help="where report.csv/report.png go (default: the folder)")
    parser.add_argument("--no-plot", action="store_true", help="skip report.png")
    args = parser.parse_args(argv)

    folder = args.folder or latest_multirun()
    if folder is None:
        parser.error("no folder given and no sweep folder under ./multirun")
    if not folder.is_dir():
        parser.error(f"{folder} is not a folder")
    text = report(folder, out=args.out, top=args.top, plot=not args.no_plot)
    print(text)
    return 0 if not text.startswith("no run folders") else 1


if __name__ == "__main__":
    sys.exit(main())
