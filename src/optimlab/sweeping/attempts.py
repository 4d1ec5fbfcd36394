"""Who runs a trial, whether that process still lives, and how a dead trial continues.

Every trial records its owner when a worker claims it (user attr ``owner``: host, pid and
the process's start time, so a recycled pid is never mistaken for the owner). A worker
that finds a RUNNING trial whose owner on its own host is gone marks it FAIL with the
reason ("worker pid N on host H died"); on RDB storages heartbeats do the same for
owners on other hosts (Optuna's ``fail_stale_trials``). This works on every storage, so
re-running the command always completes the study.

A dead or stopped attempt (SIGKILL, SIGTERM, Ctrl-C, a lost host) is *resumable*: the
next claim enqueues a trial with the same params, linked by ``resume_of``, that continues
from the dead attempt's last epoch checkpoint. The dead attempt stays in the study (FAIL,
with its reason). :func:`resume_overrides` is the one place that says how a trial
continues another run folder.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
from optuna.trial import FrozenTrial, TrialState

from optimlab.errors import StorageUnreachable
from optimlab.run.folder import RunFolder

log = logging.getLogger(__name__)

OWNER = "owner"  # {"host", "pid", "started"} of the worker process that claimed the trial
RESUMABLE = "resumable"  # set on a FAIL attempt whose trial must go on from its checkpoint
RESUME_OF = "resume_of"  # on a continuation: the number of the attempt it continues
RESUME_REASON = "resume_reason"  # on a continuation: why the attempt it continues was failed
DEATHS = "deaths"  # on a continuation: how many attempts of this trial died (not signals)
DIED = "died"  # the status of an attempt whose process vanished (summary.json and trials.csv)
STORAGE_LOST = StorageUnreachable.status  # its worker stopped: the storage was unreachable past the patience


def me() -> dict[str, Any]:
    """The owner record of this process."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def owner_alive(owner: dict[str, Any] | None) -> bool | None:
    """True / False for an owner on this host; None when it cannot be known from here."""
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return None
    try:
        proc = psutil.Process(int(owner["pid"]))
        if abs(proc.create_time() - float(owner["started"])) > 0.01:
            return False  # the pid was recycled by another process
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False
    except psutil.AccessDenied:
        return True  # someone else's live process holds that pid


def died_reason(owner: dict[str, Any]) -> str:
    return f"worker pid {owner.get('pid')} on host {owner.get('host')} died"


def dead_on_this_host(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.RUNNING and owner_alive(t.user_attrs.get(OWNER)) is False]


def mark_dead(study, storage, trial: FrozenTrial, reason: str, status: str) -> bool:
    """Record why ``trial`` (owned by a process that is gone) ended, and tell it FAIL.

    A worker that stopped because the storage was unreachable (it could not say so in the
    study) says it in the trial's run folder: such an attempt is not a death."""
    run_dir = trial.user_attrs.get("run_dir")
    folder = RunFolder(run_dir, create=False) if run_dir else None
    run = folder.summary() if folder is not None else {}
    if STORAGE_LOST in (run.get("status"), run.get("stopped_by")):
        owner = trial.user_attrs.get(OWNER) or {}
        reason = f"worker pid {owner.get('pid')} on host {owner.get('host')} stopped: the storage was unreachable"
        status = STORAGE_LOST
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), trial.number)
    try:
        for key, value in {"fail_reason": reason, "status": status, RESUMABLE: True}.items():
            storage.set_trial_user_attr(trial_id, key, value)
        study.tell(trial.number, state=TrialState.FAIL)
    except StorageUnreachable:
        raise
    except Exception as e:  # noqa: BLE001 - another worker finished it first
        log.debug("trial %d was ended elsewhere: %s", trial.number, e)
        return False
    if folder is not None and run.get("status") == "running":  # the process never got to write its end
        folder.update_summary(status=status, error=reason)
    log.warning("trial %d FAIL: %s; it will resume from its last checkpoint", trial.number, reason)
    return True


def mark_storage_lost(run_dir: Path) -> None:
    """Say in a trial's run folder that its worker stopped because the storage stayed
    unreachable (the study cannot be told): :func:`mark_dead` reads it."""
    folder = RunFolder(run_dir, create=False)
    try:
        if folder.summary():
            folder.update_summary(stopped_by=STORAGE_LOST)
    except OSError:
        pass  # the run's own summary may say it already (status storage_unreachable)


def deaths(trial: FrozenTrial) -> int:
    """How many attempts of this trial died (a stop signal is not a death)."""
    before = int(trial.user_attrs.get(DEATHS, 0))
    return before + (trial.user_attrs.get("status") == DIED or "fail_reason" not in trial.user_attrs)


def pending(trials: list[FrozenTrial], max_retry: int) -> list[FrozenTrial]:
    """Dead or stopped attempts that no trial continues yet, oldest first.

    A FAIL trial with an owner but no reason was failed by Optuna's heartbeat check (its
    worker on another host stopped beating). Attempts that died more than ``max_retry``
    times are left FAIL (a trial that kills its worker every time must not loop for ever);
    stopped ones (SIGTERM, Ctrl-C) always continue.
    """
    continued = {t.user_attrs.get(RESUME_OF) for t in trials}
    out = []
    for t in trials:
        if t.state != TrialState.FAIL or t.number in continued:
            continue
        stale = OWNER in t.user_attrs and "fail_reason" not in t.user_attrs
        if not (t.user_attrs.get(RESUMABLE) or stale):
            continue
        if (stale or t.user_attrs.get("status") == DIED) and deaths(t) > max_retry:
            continue
        out.append(t)
    return sorted(out, key=lambda t: t.number)


def continuation_attrs(dead: FrozenTrial) -> dict[str, Any]:
    """User attrs of the trial that continues ``dead``."""
    attrs: dict[str, Any] = {RESUME_OF: dead.number, DEATHS: deaths(dead)}
    if "fail_reason" not in dead.user_attrs:
        attrs[RESUME_REASON] = "no heartbeat from its worker (" + died_reason(dead.user_attrs.get(OWNER) or {}) + ")"
    return attrs


def grid_point(dead: FrozenTrial | None) -> dict[str, Any]:
    """The GridSampler's marks of ``dead`` (its grid point), for the trial that continues it:
    Optuna's grid sampler gives an enqueued trial none and fails to tell it when it is the
    grid's last open point."""
    if dead is None:
        return {}
    return {k: dead.system_attrs[k] for k in ("grid_id", "search_space") if k in dead.system_attrs}


def resume_source(trials_by_number: dict[int, FrozenTrial], number: int) -> Path | None:
    """The run folder a continuation of attempt ``number`` resumes from: the newest folder
    along the chain of attempts that holds a checkpoint (None: start the params afresh)."""
    seen = set()
    while number is not None and number not in seen:
        seen.add(number)
        trial = trials_by_number.get(number)
        if trial is None:
            return None
        run_dir = trial.user_attrs.get("run_dir")
        if run_dir and RunFolder(run_dir, create=False).has_checkpoint:
            return Path(run_dir)
        number = trial.user_attrs.get(RESUME_OF)
    return None


def earlier_reports(trials: Iterable[FrozenTrial], source: Path) -> dict[int, float]:
    """The per-epoch values the attempt that wrote ``source`` reported for the epochs its
    checkpoint holds: a continuation reports them again, so the pruner sees its whole curve
    (a successive-halving rung it passed before dying is not skipped)."""
    owner = next((t for t in trials if t.user_attrs.get("run_dir") == str(source)), None)
    if owner is None or not owner.intermediate_values:
        return {}
    try:
        epoch = RunFolder(source, create=False).load_checkpoint().epoch
    except Exception:  # noqa: BLE001 - the job's own resume reports an unreadable checkpoint
        return {}
    return {step: value for step, value in sorted(owner.intermediate_values.items()) if step <= epoch}


def resume_overrides(source: Path, quote) -> list[str]:
    """THE coupling between a continued trial and the run layer: the job's extra overrides."""
    return [f"resume={quote(source)}"]
