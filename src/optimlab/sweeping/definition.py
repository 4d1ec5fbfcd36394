"""What defines a study: the config every trial starts from and the search space.

A study ranks its trials against each other, so they must differ in their params only. The
first sweep of a study records its definition in the study (user attribute
:data:`DEFINITION`); a later sweep of the same study (same storage and ``study_name``) whose
config or search space differs is refused before any trial runs, with one line naming each
changed key (saved → now), unless ``hydra.sweeper.allow_changes=true``: then the change is
appended to the study's :data:`CHANGES` (when, how many trials it held, what changed) and
the sweep goes on.

The config part is a trial's composed job config without Hydra's node and without the
swept keys; for optimlab's own ``train.py`` also without the keys that never change a
run's numbers (:data:`optimlab.config.knobs.OUTPUT_KEYS`: loggers, plots, …). Values are
kept as composed, interpolations unresolved (``${lr}``, ``${hydra:runtime.output_dir}``,
``${optimlab.trial:}``): what a user can change, and the same in every process that sweeps
the study; anything not JSON is kept as its text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from optimlab.config import knobs
from optimlab.errors import SweepConfigError
from optimlab.run.provenance import now_iso
from optimlab.run.resume import flatten
from optimlab.sweeping.workers import SWEEP_LOGGER

log = logging.getLogger(SWEEP_LOGGER)

DEFINITION = "optimlab.definition"  # study user attribute: {"config": {key: value}, "space": {…}, "choices": {…}}
CHANGES = "optimlab.changes"  # study user attribute: [{"at", "trials", "changed": {key: [saved, now]}}, …]
ALLOW = "hydra.sweeper.allow_changes=true"
SHOWN = 6  # changed keys named in the refusal's line
ABSENT = object()


def of(job: DictConfig, space: Mapping[str, BaseDistribution], *, custom: str | None, optimlab_app: bool) -> dict:
    """The definition of a study whose trials start from ``job`` (a composed job config)
    and sample ``space`` (``custom``: the ``custom_search_space`` function, if any)."""
    swept = [str(k).lstrip("+~").replace("/", ".") for k in space]
    config = {}
    raw = OmegaConf.to_container(job, resolve=False)
    raw.pop("hydra", None)
    for key, value in flatten(raw).items():
        if _within(key, swept) or (optimlab_app and knobs.is_output_key(key)):
            continue
        config[key] = _jsonable(value)
    found = {"config": config, "space": {str(k): text(d) for k, d in space.items()}}
    if custom:
        found["space"]["custom_search_space"] = custom
    choices = job.hydra.runtime.choices if "hydra" in job else {}
    found["choices"] = {str(g): _jsonable(c) for g, c in choices.items() if not str(g).startswith("hydra/")}
    return json.loads(json.dumps(found))  # as the storage gives it back


def _within(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=True)
        return value
    except (TypeError, ValueError):
        return str(value)


def text(dist: BaseDistribution) -> str:
    """A distribution in the override syntax it comes from: ``tag(log, interval(0.0001, 0.1))``."""
    if isinstance(dist, CategoricalDistribution):
        return f"choice({', '.join(repr(c) if isinstance(c, str) else str(c) for c in dist.choices)})"
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        found = f"interval({dist.low}, {dist.high})"
        if isinstance(dist, IntDistribution):
            found = f"int({found})"
        if dist.log:
            found = f"tag(log, {found})"
        stepped = dist.step is not None and not (isinstance(dist, IntDistribution) and dist.step == 1)
        return f"{found} step {dist.step}" if stepped else found
    return repr(dist)


def differences(saved: Mapping, now: Mapping) -> dict[str, tuple[Any, Any]]:
    """Changed keys of the config (``epochs``) and the search space (``search space lr``):
    key → (saved, now), ABSENT where a side lacks the key."""
    found: dict[str, tuple[Any, Any]] = {}
    for part, label in (("config", ""), ("space", "search space ")):
        a, b = saved.get(part) or {}, now.get(part) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key, ABSENT) != b.get(key, ABSENT):
                found[label + key] = (a.get(key, ABSENT), b.get(key, ABSENT))
    return found


def describe(diffs: Mapping[str, tuple[Any, Any]], saved: Mapping, now: Mapping) -> list[str]:
    """One phrase per change, ``key: saved → now``; the keys of a config group whose option
    changed are one phrase, ``optimizer: momentum → adam``."""
    old, new = saved.get("choices") or {}, now.get("choices") or {}
    groups = [g for g in sorted(set(old) | set(new)) if old.get(g) != new.get(g)]
    phrases, told = [], set()
    for key, (a, b) in diffs.items():
        group = next((g for g in groups if _within(key, [g.replace("/", ".")])), None)
        if group is None:
            phrases.append(f"{key}: {_show(a)} → {_show(b)}")
        elif group not in told:
            told.add(group)
            phrases.append(f"{group}: {_show(old.get(group, ABSENT))} → {_show(new.get(group, ABSENT))}")
    return phrases


def _show(value: Any) -> str:
    if value is ABSENT:
        return "(none)"
    return value if isinstance(value, str) and value else json.dumps(value)


def _changed_before(study) -> str:
    """Where the study's config changed before (with the opt-in): its trials are of several configs."""
    changes = study.user_attrs.get(CHANGES) or []
    return f" (changed {len(changes)} time(s) before, at trial(s) {', '.join(str(c['trials']) for c in changes)})" if changes else ""


def check(study, found: dict, *, allow_changes: bool, where: str) -> None:
    """Record ``found`` as the study's definition, or compare it with the recorded one:
    a study holding trials of another definition is refused (SweepConfigError), unless
    ``allow_changes``, which records the change in the study's :data:`CHANGES`."""
    saved = study.user_attrs.get(DEFINITION)
    if saved == found:
        return
    trials = study.get_trials(deepcopy=False)
    diffs = differences(saved, found) if saved is not None and trials else {}
    if diffs and not allow_changes:
        phrases = describe(diffs, saved, found)
        more = f"; and {len(phrases) - SHOWN} more" if len(phrases) > SHOWN else ""
        raise SweepConfigError(
            f"{where} ({len(trials)} trial(s)) was last run with another config{_changed_before(study)}: "
            f"{'; '.join(phrases[:SHOWN])}{more}. "
            f"Its trials would be ranked against trials of this one: use a new hydra.sweeper.study_name for a "
            f"new study, or add {ALLOW} to go on in this study (the change is recorded in its {CHANGES})"
        )
    if diffs:
        entry = {"at": now_iso(), "trials": len(trials), "changed": {k: [_show(a), _show(b)] for k, (a, b) in diffs.items()}}
        study.set_user_attr(CHANGES, [*study.user_attrs.get(CHANGES, []), entry])
        log.warning("%s: going on with another config (%s), recorded in its %s: %s",
                    where, ALLOW, CHANGES, "; ".join(describe(diffs, saved, found)))  # fmt: skip
    study.set_user_attr(DEFINITION, found)
