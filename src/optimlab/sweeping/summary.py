"""The sweep folder's summary, refreshed as trials finish: trials.csv,
optimization_results.yaml (best params, value and the command that re-runs the best trial),
PNG plots (Optuna's matplotlib visualizations) and a compact table of the top trials."""

from __future__ import annotations

import csv
import io
import logging
import shlex
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from optimlab import objective
from optimlab.config import overrides as ovr
from optimlab.files import atomic_write_bytes, atomic_write_text
from optimlab.observe.tables import render

log = logging.getLogger(__name__)

TRIALS_FILE = "trials.csv"
RESULTS_FILE = "optimization_results.yaml"
PLOTS = ("optimization_history.png", "lr_momentum.png", "param_importances.png")


def trial_rows(study) -> list[dict[str, Any]]:
    every = study.get_trials(deepcopy=False)
    trials = [t for t in every if t.state.name != "WAITING"]
    # an attempt failed by Optuna's heartbeat check has its reason on the trial that continues it
    later = {t.user_attrs["resume_of"]: t.user_attrs.get("resume_reason") for t in every if "resume_of" in t.user_attrs}
    names = sorted({p for t in trials for p in t.params})
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        a = t.user_attrs
        duration = t.duration.total_seconds() if t.duration is not None else None
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value if t.values is not None and len(t.values) == 1 else t.values,
                **{p: t.params.get(p) for p in names},
                "status": a.get("status", ""),
                "best_epoch": a.get("best_epoch", ""),
                "epochs": a.get("epochs", ""),
                "duration_s": round(duration, 3) if duration is not None else "",
                "run_dir": a.get("run_dir", ""),
                "host": a.get("host", ""),
                "reason": a.get("fail_reason") or later.get(t.number) or "",
            }
        )
    return rows


def best_command(params: dict[str, Any], base_overrides: list[str]) -> str:
    """``python train.py …`` that re-runs a trial as a single run."""
    parts = ovr.without_keys(base_overrides, params)
    parts += [f"{k}={_fmt(v)}" for k, v in params.items()]
    return shlex.join(["python", "train.py", *parts])


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def write_tables(study, sweep_dir: Path, base_overrides: list[str], storage: str) -> dict[str, Any]:
    """trials.csv and optimization_results.yaml (cheap: after every trial)."""
    rows = trial_rows(study)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(sweep_dir / TRIALS_FILE, buf.getvalue())

    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    results: dict[str, Any] = {
        "name": "optimlab",
        "study_name": study.study_name,
        "storage": storage,
        "direction": study.direction.name.lower() if len(study.directions) == 1 else None,
        "trials": counts,
    }
    best = _best(study)
    if best is not None:
        results.update(
            best_trial=best.number,
            best_params=dict(best.params),
            best_value=best.value,
            best_run_dir=best.user_attrs.get("run_dir"),
            best_command=best_command(dict(best.params), base_overrides),
        )
    atomic_write_text(sweep_dir / RESULTS_FILE, OmegaConf.to_yaml(OmegaConf.create(results)))
    return results


def _best(study):
    try:
        return study.best_trial
    except ValueError:  # no COMPLETE trial yet
        return None


def write_plots(study, sweep_dir: Path) -> list[Path]:
    """PNG plots of the study; a plot that cannot be made yet is skipped with a log line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ov

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return []
    names = sorted({p for t in complete for p in t.params})
    pair = [n for n in ("lr", "momentum") if n in names] or names[:2]
    if len(pair) < 2:
        pair = names[:2]
    made = []

    def save(make, name):
        try:
            ax = make()
            fig = ax.ravel()[0].figure if hasattr(ax, "ravel") else ax.figure
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100)
            atomic_write_bytes(sweep_dir / name, buf.getvalue())
            made.append(sweep_dir / name)
        except Exception as e:  # noqa: BLE001 - a plot must never fail the sweep
            log.info("plot %s skipped: %s", name, e)
        finally:
            plt.close("all")

    save(lambda: ov.plot_optimization_history(study), PLOTS[0])
    if len(pair) == 2 and len(complete) >= 2:
        save(lambda: ov.plot_contour(study, params=pair), PLOTS[1])
    elif names:
        save(lambda: ov.plot_slice(study, params=names), PLOTS[1])
    if len(names) >= 2 and len(complete) >= 4:
        save(lambda: ov.plot_param_importances(study), PLOTS[2])
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        save(lambda: ov.plot_intermediate_values(study), "intermediate_values.png")
    return made


def top_table(study, k: int) -> str:
    """A compact text table of the best ``k`` COMPLETE trials."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    if not complete:
        return "no completed trial"
    direction = study.direction.name.lower()
    complete.sort(key=lambda t: objective.rank_key(t.value, direction))
    names = sorted({p for t in complete for p in t.params})
    header = ["#", "value", *names, "best_epoch", "run_dir"]
    rows = [
        [str(t.number), f"{t.value:.4g}", *[_short(t.params.get(n)) for n in names],
         str(t.user_attrs.get("best_epoch", "")), str(t.user_attrs.get("run_dir", ""))]
        for t in complete[:k]
    ]  # fmt: skip
    return render(header, rows)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
