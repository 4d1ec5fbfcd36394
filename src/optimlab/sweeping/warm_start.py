"""Warm start: a new study begins with the best trials of an earlier one.

``hydra.sweeper.warm_start`` names the earlier study: its sweep folder (the study in its
``optuna.db`` / ``optuna.journal``, or in the storage its optimization_results.yaml names),
or ``<storage URL>#<study name>``; without ``#<study name>`` the storage's one study. When
the sweep creates its study (no trials yet), the best ``warm_start_k`` COMPLETE trials of
the source (one objective: by value in the source's direction, ties to the earlier trial;
several: its Pareto front) are enqueued with Optuna's ``enqueue_trial``: the params the new
search space has, if each value lies inside its distribution (a trial that does not fit is
skipped). A worker asks for the enqueued trials first; they count toward ``n_trials`` and
train, prune and inform the sampler as any other trial.

The study records where it came from (user attribute :data:`WARM_START`), each enqueued
trial the source trial it repeats (:data:`WARM_START_OF`). A study that has trials is never
seeded again: resuming it (the same command) leaves warm_start aside with one line.

The source is checked before anything is written and before torch is imported: a bad one is
one :class:`~optimlab.errors.SweepConfigError` line (exit 2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimlab import objective
from optimlab.errors import SweepConfigError
from optimlab.sweeping.storage import JOURNAL, SQLITE, absolute_url, default_storage_url, open_storage, redact, study_lock
from optimlab.sweeping.workers import SWEEP_LOGGER

log = logging.getLogger(SWEEP_LOGGER)

WARM_START = "optimlab.warm_start"  # study user attr: {source, storage, study, trials: [{number, params}], skipped}
WARM_START_OF = "warm_start_of"  # trial user attr: the number of the source trial whose params it repeats
ALLOWED = "an earlier sweep's folder (e.g. multirun/lr_momentum_fast) or <storage URL>#<study name>"


@dataclass(frozen=True)
class Seed:
    """What a new study starts with: the source's best trials that fit its search space."""

    source: str  # as shown: the folder, or the storage URL (password hidden), and #study
    storage: str
    study: str
    trials: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (source trial number, params)
    skipped: int = 0  # better source trials whose params do not fit the new search space


def plan(settings, url: str, distributions: dict) -> Seed | None:
    """The trials to enqueue into the sweep's study at ``url`` (``settings.study_name``);
    None when no warm start is asked for, or the study has trials already (one line says
    so). Reads only; SweepConfigError for a source that cannot seed it."""
    spec = settings.warm_start
    if not spec:
        return None
    key = f"hydra.sweeper.warm_start={spec}"
    sampler = settings.sampler.get("_target_") if settings.sampler is not None else None
    if sampler == "optuna.samplers.GridSampler":
        raise SweepConfigError(f"{key}: a grid sweep visits every point itself; warm start needs another sampler "
                               "(hydra/sweeper/sampler=tpe, random, cmaes, …)")  # fmt: skip
    existing = _existing_trials(url, settings.study_name)
    if existing is not None:
        done = existing[1].get(WARM_START)
        why = f"it was warm-started from {done['source']} when it was created" if done else "warm start only seeds a new study"
        log.info("%s left aside: study %s has %d trial(s) already (%s)", key, settings.study_name, existing[0], why)
        return None
    storage_url, name, shown = _locate(spec, key)
    source = _load(storage_url, name, key)
    ranked = _ranked(source, key)
    picked, skipped = [], 0
    for trial in ranked:
        if len(picked) == min(settings.warm_start_k, settings.n_trials):
            break
        params = fits(trial.params, distributions)
        if params is None or any(params == p for _, p in picked):
            skipped += 1
            continue
        picked.append((trial.number, params))
    return Seed(f"{shown}#{source.study_name}", redact(storage_url), source.study_name, picked, skipped)


def apply(seed: Seed | None, study, url: str) -> None:
    """Enqueue ``seed``'s trials into ``study`` (at ``url``) and record the source, unless
    another worker or host created and seeded the study first."""
    if seed is None:
        return
    with study_lock(url, study.study_name):
        if study.get_trials(deepcopy=False):
            return
        for number, params in seed.trials:
            study.enqueue_trial(params, user_attrs={WARM_START_OF: number})
        study.set_user_attr(WARM_START, {
            "source": seed.source, "storage": seed.storage, "study": seed.study, "skipped": seed.skipped,
            "trials": [{"number": n, "params": p} for n, p in seed.trials],
        })  # fmt: skip
    numbers = ", ".join(str(n) for n, _ in seed.trials) or "none"
    skipped = f"; {seed.skipped} better trial(s) skipped: params outside this sweep's search space" if seed.skipped else ""
    log.info("Warm start from %s: %d trial(s) enqueued first (source trials %s)%s",
             seed.source, len(seed.trials), numbers, skipped)  # fmt: skip


def fits(params: dict[str, Any], distributions: dict) -> dict[str, Any] | None:
    """The params the search space ``distributions`` has, when each value lies inside its
    distribution (Optuna's own check of a fixed param); None when one does not, or none is left."""
    kept = {}
    for name, value in params.items():
        dist = distributions.get(name)
        if dist is None:
            continue  # not searched by the new sweep
        try:
            inside = dist._contains(dist.to_internal_repr(value))
        except (ValueError, TypeError):  # another kind of value (a choice's option, a number)
            inside = False
        if not inside:
            return None
        kept[name] = value
    return kept or None


def _existing_trials(url: str, study_name: str) -> tuple[int, dict] | None:
    """(trials, user attrs) of the study at ``url`` when it exists and has trials; else None.
    A storage file that is not there yet is not created."""
    for prefix in (SQLITE, JOURNAL):
        if url.startswith(prefix) and not Path(url[len(prefix):]).is_file():
            return None
    storage = open_storage(url)
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return None
    n = len(storage.get_all_trials(study_id, deepcopy=False))
    return (n, storage.get_study_user_attrs(study_id)) if n else None


def _locate(spec: str, key: str) -> tuple[str, str | None, str]:
    """(storage URL, study name or None, how the source is shown) of a warm_start value."""
    where, _, name = spec.rpartition("#") if "#" in spec else (spec, "", "")
    if "://" in where:
        return absolute_url(where), name or None, redact(absolute_url(where))
    folder = Path(where).expanduser().resolve()
    if not folder.is_dir():
        raise SweepConfigError(f"{key}: there is no folder {folder}; give {ALLOWED}")
    url = default_storage_url(folder, 1)  # its journal, else its SQLite file, as the sweep that made it chose
    if Path(url[len(JOURNAL if url.startswith(JOURNAL) else SQLITE):]).is_file():
        return url, name or None, str(folder)
    from optimlab.sweeping.summary import RESULTS_FILE

    results = folder / RESULTS_FILE  # a sweep on another storage names it there
    recorded = _read_yaml(results)
    if recorded.get("storage"):
        return absolute_url(str(recorded["storage"])), name or recorded.get("study_name"), str(folder)
    raise SweepConfigError(f"{key}: {folder} holds no optimlab study (no study file, no {RESULTS_FILE}); "
                           f"give {ALLOWED}")  # fmt: skip


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        found = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        found = None
    return found if isinstance(found, dict) else {}


def _load(url: str, name: str | None, key: str):
    """The source study, read through optimlab's storage (outages waited out as a sweep's)."""
    import optuna

    for prefix in (SQLITE, JOURNAL):
        if url.startswith(prefix) and not Path(url[len(prefix):]).is_file():
            raise SweepConfigError(f"{key}: there is no study file {url[len(prefix):]}; give {ALLOWED}")
    try:
        storage = open_storage(url)
        names = optuna.get_all_study_names(storage)
    except Exception as e:  # noqa: BLE001 - not a storage, a server that is not there, a damaged file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SweepConfigError(f"{key}: cannot read the storage {redact(url)} ({first}); give {ALLOWED}") from None
    if name is None and len(names) == 1:
        name = names[0]
    if name not in names:
        listed = ", ".join(names) if names else "none"
        what = f"has no study {name!r}" if name else f"holds {len(names)} studies"
        raise SweepConfigError(f"{key}: {redact(url)} {what} (studies: {listed}); add #<study name> to pick one")
    return optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())


def _ranked(source, key: str) -> list:
    """The source's trials to start from, best first: by value in its direction (ties to the
    earlier trial), or its Pareto front (best first by its first objective)."""
    from optuna.trial import TrialState

    complete = source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise SweepConfigError(f"{key}: study {source.study_name!r} has no COMPLETE trial to start from "
                               f"({len(source.get_trials(deepcopy=False))} trial(s)); give a study with finished trials")  # fmt: skip
    pool = source.best_trials if len(source.directions) > 1 else complete
    direction = source.directions[0].name.lower()
    return sorted(pool, key=lambda t: (objective.rank_key(t.values[0], direction), t.number))
