"""The sweep folder's summary, refreshed as trials finish: trials.csv,
optimization_results.yaml (best params, value and the command that re-runs the best trial;
with several objectives the Pareto-optimal trials under ``solutions``, as the upstream
plugin writes them), PNG plots (Optuna's matplotlib visualizations) and a compact table of
the top (Pareto-optimal) trials; at the sweep's end, :func:`finalize` logs them."""

from __future__ import annotations

import csv
import io
import logging
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from optimlab import objective
from optimlab.config import overrides as ovr
from optimlab.files import atomic_write_bytes, atomic_write_text
from optimlab.observe.tables import render
from optimlab.sweeping.attempts import RESUME_OF, RESUME_REASON
from optimlab.sweeping.warm_start import WARM_START, WARM_START_OF
from optimlab.sweeping.workers import SWEEP_LOGGER

log = logging.getLogger(__name__)
sweep_log = logging.getLogger(SWEEP_LOGGER)  # the closing lines are the sweep's own

TRIALS_FILE = "trials.csv"
RESULTS_FILE = "optimization_results.yaml"
PLOTS = ("optimization_history.png", "lr_momentum.png", "param_importances.png")
PARETO_PLOT = "pareto_front.png"
# a string value Hydra reads back as that same string without quotes (a group option, a name)
PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
HYDRA_WORDS = {"true", "false", "null", "inf", "nan"}
# trial user attribute: the overrides that re-run it as a single run (its own job's, as in its
# .hydra/overrides.yaml, without a continuation's resume=; plus hydra.mode=RUN where needed)
OVERRIDES = "trial_overrides"


def objective_names(study) -> list[str]:
    """One name per objective: the study's metric names, else 0, 1, … (as Optuna's
    ``trials_dataframe`` names its ``values_…`` columns)."""
    return list(study.metric_names or [str(i) for i in range(len(study.directions))])


def pareto_numbers(study) -> set[int]:
    return {t.number for t in study.best_trials} if len(study.directions) > 1 else set()


def _value_columns(study, t) -> dict[str, Any]:
    if len(study.directions) == 1:
        return {"value": t.value if t.values is not None else None}
    values = t.values or [None] * len(study.directions)
    return {f"values_{name}": v for name, v in zip(objective_names(study), values)}


def trial_rows(study) -> list[dict[str, Any]]:
    every = study.get_trials(deepcopy=False)
    trials = [t for t in every if t.state.name != "WAITING"]
    # an attempt failed by Optuna's heartbeat check has its reason on the trial that continues it
    later = {t.user_attrs[RESUME_OF]: t.user_attrs.get(RESUME_REASON) for t in every if RESUME_OF in t.user_attrs}
    names = sorted({p for t in trials for p in t.params})
    multi = len(study.directions) > 1
    front = pareto_numbers(study)
    top = _best(study) if not multi else None
    warm = WARM_START in study.user_attrs  # a warm-started study: which source trial each first trial repeats
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        a = t.user_attrs
        duration = t.duration.total_seconds() if t.duration is not None else None
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                **_value_columns(study, t),
                **({"pareto": t.number in front} if multi else {"best": top is not None and t.number == top.number}),
                **{p: t.params.get(p) for p in names},
                "status": a.get("status", ""),
                "best_epoch": a.get("best_epoch", ""),
                "epochs": a.get("epochs_completed", ""),
                "duration_s": round(duration, 3) if duration is not None else "",
                "run_dir": a.get("run_dir", ""),
                "host": a.get("host", ""),
                "reason": a.get("fail_reason") or later.get(t.number) or "",
                **({WARM_START_OF: a.get(WARM_START_OF, "")} if warm else {}),
            }
        )
    return rows


def base_overrides(config: DictConfig, fixed: Mapping[str, Any]) -> list[str]:
    """What every trial of this sweep runs with besides its params: the command line's fixed
    overrides, then the ``fixed`` values of ``hydra.sweeper.params`` (a single run does not read those)."""
    cli = cli_overrides(config)
    typed = {ovr.key_of(line) for line in cli}
    return cli + [f"{k}={v}" for k, v in fixed.items() if ovr.key_of(f"{k}={v}") not in typed]


def cli_overrides(config: DictConfig) -> list[str]:
    """The command line's fixed (not swept) task overrides."""
    return [o.input_line for o in ovr.parse(config.hydra.overrides.task) if not o.is_sweep_override()]


def single_run(config: DictConfig, config_loader) -> list[str]:
    """``["hydra.mode=RUN"]`` when the command line's overrides alone start a sweep (a preset
    with ``hydra.mode: MULTIRUN``, as lightning-hydra-template's hparams_search): a trial's
    command then needs it to be a single run; else nothing."""
    from hydra.types import RunMode

    try:
        cfg = config_loader.load_configuration(
            config_name=config.hydra.job.config_name, overrides=cli_overrides(config), run_mode=RunMode.RUN,
        )  # fmt: skip
        return ["hydra.mode=RUN"] if cfg.hydra.mode == RunMode.MULTIRUN else []
    except Exception:  # noqa: BLE001 - only the printed command depends on it
        return []


def trial_command(trial, base_overrides: list[str]) -> str:
    """The single-run command that re-trains ``trial``: the overrides it recorded when it ran
    (user attribute :data:`OVERRIDES`), whatever the command that resumed the study later;
    a trial of an older version without them: this sweep's ``base_overrides`` and its params."""
    own = trial.user_attrs.get(OVERRIDES)
    return best_command(dict(trial.params), list(own) if own is not None else base_overrides)


def best_command(params: dict[str, Any], base_overrides: list[str]) -> str:
    """The sweep's own command (``python train.py``, ``python app.py``, …) that re-runs a
    trial with ``params`` as a single run."""
    parts = ovr.without_keys(base_overrides, params)
    parts += [f"{k}={_fmt(v)}" for k, v in params.items()]
    return shlex.join([*ovr.program(), *parts])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str) and not PLAIN.fullmatch(v) or str(v).lower() in HYDRA_WORDS:
        return ovr.quote(v)  # stays a string when Hydra parses it back (as the trial's override did)
    return str(v)


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
    multi = len(study.directions) > 1
    results: dict[str, Any] = {
        "name": "optimlab",
        "study_name": study.study_name,
        "storage": storage,
        "direction": study.direction.name.lower() if not multi else [d.name.lower() for d in study.directions],
        "trials": counts,
    }
    if multi:
        # the upstream plugin's `solutions` (params, values), plus where each is and how to re-run it
        results["objectives"] = study.metric_names  # null: a task's unnamed values
        results["solutions"] = [
            {"params": dict(t.params), "values": list(t.values), "trial": t.number,
             "run_dir": t.user_attrs.get("run_dir"), "best_command": trial_command(t, base_overrides)}
            for t in _pareto_sorted(study)
        ]  # fmt: skip
    best = _best(study) if not multi else None
    if best is not None:
        results.update(
            best_trial=best.number,
            best_params=dict(best.params),
            best_value=best.value,
            best_run_dir=best.user_attrs.get("run_dir"),
            best_command=trial_command(best, base_overrides),
        )
    atomic_write_text(sweep_dir / RESULTS_FILE, OmegaConf.to_yaml(OmegaConf.create(results)))
    return results


def finalize(study, sweep_dir: Path, base_overrides: list[str], storage: str, *, plots: bool, top_k: int) -> None:
    """The sweep's end: its tables and (``plots``) plots, and the log lines of its top ``top_k``
    trials, its best one and the command that re-runs it."""
    try:
        results = write_tables(study, sweep_dir, base_overrides, storage)
        if plots:
            write_plots(study, sweep_dir)
    except Exception as e:  # noqa: BLE001 - the study is safe in its storage whatever happens here
        sweep_log.warning("could not write the sweep summary: %s", e)
        return
    sweep_log.info("Trials: %s | summary in %s", results.get("trials"), sweep_dir)
    if len(study.directions) > 1:
        sweep_log.info("Pareto-optimal trials (%d):\n%s", len(results.get("solutions", [])), top_table(study, top_k))
        return
    sweep_log.info("Top trials:\n%s", top_table(study, top_k))
    if "best_value" in results:
        sweep_log.info("Best value %.6g (trial %d): %s",
                       results["best_value"], results["best_trial"], results["best_params"])  # fmt: skip
        sweep_log.info("Re-run the best trial: %s", results["best_command"])


def _best(study):
    """The study's best trial by optimlab's one rule (:func:`optimlab.objective.best_trial`);
    None: no COMPLETE trial yet."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return objective.best_trial(complete, lambda t: t.value, lambda t: t.number, study.direction.name.lower())


def _pareto_sorted(study) -> list:
    """The Pareto-optimal trials, best first by the first objective."""
    direction = study.directions[0].name.lower()
    return sorted(study.best_trials, key=lambda t: (objective.rank_key(t.values[0], direction), t.number))


def write_plots(study, sweep_dir: Path) -> list[Path]:
    """PNG plots of the study; a plot that cannot be made yet is skipped with a log line."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as ov

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        return []
    names = sorted({p for t in complete for p in t.params})
    if len(study.directions) > 1:  # Optuna's history and contour plots take one objective
        return _multi_plots(study, sweep_dir)
    pair = [n for n in ("lr", "momentum") if n in names] or names[:2]
    if len(pair) < 2:
        pair = names[:2]
    made: list[Path] = []

    def save(make, name):
        _save(make, sweep_dir / name, made)

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


def _save(make, path: Path, made: list[Path]) -> None:
    """Draw with ``make`` (an Optuna matplotlib plot) into ``path``; a plot never fails the sweep."""
    import matplotlib.pyplot as plt

    try:
        ax = make()
        fig = ax.ravel()[0].figure if hasattr(ax, "ravel") else ax.figure
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        atomic_write_bytes(path, buf.getvalue())
        made.append(path)
    except Exception as e:  # noqa: BLE001 - a plot must never fail the sweep
        log.info("plot %s skipped: %s", path.name, e)
    finally:
        plt.close("all")


def _multi_plots(study, sweep_dir: Path) -> list[Path]:
    """Several objectives: the Pareto front (Optuna draws 2 or 3 objectives)."""
    import optuna.visualization.matplotlib as ov

    made: list[Path] = []
    _save(lambda: ov.plot_pareto_front(study, target_names=study.metric_names), sweep_dir / PARETO_PLOT, made)
    return made


def top_table(study, k: int) -> str:
    """A compact text table of the best ``k`` COMPLETE trials (several objectives: the
    Pareto-optimal ones, by the first objective)."""
    if len(study.directions) > 1:
        return _pareto_table(study, k)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    if not complete:
        return "no completed trial"
    direction = study.direction.name.lower()
    complete.sort(key=lambda t: objective.trial_order(t.value, t.number, direction))
    names = sorted({p for t in complete for p in t.params})
    header = ["#", "value", *names, "best_epoch", "run_dir"]
    rows = [
        [str(t.number), f"{t.value:.4g}", *[_short(t.params.get(n)) for n in names],
         str(t.user_attrs.get("best_epoch", "")), str(t.user_attrs.get("run_dir", ""))]
        for t in complete[:k]
    ]  # fmt: skip
    return render(header, rows)


def _pareto_table(study, k: int) -> str:
    front = _pareto_sorted(study)
    if not front:
        return "no completed trial"
    names = sorted({p for t in front for p in t.params})
    header = ["#", *objective_names(study), *names, "run_dir"]
    rows = [
        [str(t.number), *[f"{v:.4g}" for v in t.values], *[_short(t.params.get(n)) for n in names],
         str(t.user_attrs.get("run_dir", ""))]
        for t in front[:k]
    ]  # fmt: skip
    more = f"\n… and {len(front) - k} more in {RESULTS_FILE}" if len(front) > k else ""
    return render(header, rows) + more


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
