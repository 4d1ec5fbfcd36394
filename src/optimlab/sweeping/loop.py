"""One worker's cycle: claim trials → run them → tell the study, until the study holds
``n_trials`` finished (COMPLETE or PRUNED) trials.

A claim takes up to ``n_jobs`` trials (``pack`` when packing) under the study's lock: first
the continuations of dead or stopped attempts, then new trials the sampler asks for. The
claimed trials run as Hydra jobs (or as one pack) while a heartbeat thread keeps them
alive on RDB storages; each ends COMPLETE, PRUNED or FAIL, with one log line. A stop
signal ends the running trials resumable. The failure limits (``max_failures``,
``max_failure_rate``, or ``n_trials`` failures in a row) stop the sweep with a
:class:`~optimlab.sweeping.workers.SweepStopped`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus, configure_log
from omegaconf import DictConfig
from optuna.trial import TrialState

from optimlab.config.overrides import quote
from optimlab.errors import Pruned, StorageUnreachable, SweepStopped, is_disk_full
from optimlab.observe.context import TrialLink
from optimlab.run.folder import RunFolder
from optimlab.run.signals import SAID, SIGNALS, status_of
from optimlab.sweeping import attempts, cluster, outage, summary, upstream
from optimlab.sweeping.settings import SweepSettings
from optimlab.sweeping.storage import is_rdb, outage_of, redact, study_lock
from optimlab.sweeping.workers import SWEEP_LOGGER, Stop

log = logging.getLogger(SWEEP_LOGGER)
DISK_FULL = object()  # tell()'s word for a trial stopped by a full disk
UNTOLD = object()  # a trial whose end could not be told: the storage stayed unreachable past the patience

DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def trial_dir_name(number: int) -> str:
    return f"trial_{number:04d}"


def n_done(study) -> int:
    return sum(t.state in DONE for t in study.get_trials(deepcopy=False))


@dataclass
class OpenSweep:
    """A sweep's study as this process opened it, and the folder its trials run in."""

    settings: SweepSettings
    study: optuna.Study
    storage: Any  # the study's storage object: heartbeats, trial ids, system attrs
    storage_url: str
    sweep_dir: Path
    base_overrides: list[str]  # what every trial of this sweep runs with besides its params
    single_run: list[str]  # what a trial's command adds to be a single run (hydra.mode=RUN, or nothing)

    @property
    def heartbeat(self) -> int | None:
        """Seconds between a running trial's heartbeats; None: none (not an RDB storage, or off)."""
        interval = self.settings.heartbeat_interval
        return interval if interval and is_rdb(self.storage_url) else None

    @property
    def outage(self):
        """This process's record of the storage's outages (sweeping/outage.py)."""
        return outage_of(self.storage_url)

    @property
    def beats_again(self) -> float:
        """Seconds after a storage outage within which every live worker has beaten again."""
        return (self.settings.grace_period or 0) + 2 * (self.settings.heartbeat_interval or 0)

    def trial_dir(self, number: int) -> Path:
        return self.sweep_dir / trial_dir_name(number)

    def trial_id(self, trial) -> int:
        study_id = self.storage.get_study_id_from_name(self.settings.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)

    def write_tables(self) -> None:
        summary.write_tables(self.study, self.sweep_dir, self.base_overrides, redact(self.storage_url))

    def write_summary(self) -> None:
        """The sweep's end: tables, plots and its closing log lines (sweeping/summary.py); none
        while the storage is unreachable past the patience (the study keeps it all)."""
        if self.outage.given_up:
            return
        summary.finalize(self.study, self.sweep_dir, self.base_overrides, redact(self.storage_url),
                         plots=self.settings.plots, top_k=self.settings.top_k)  # fmt: skip


class Heartbeat:
    """Records a heartbeat for running trials every ``interval`` s (RDB storages).

    A beat is tried once, never waited for: while the storage is unreachable the thread
    notes the outage (its start and end lines) and tries again each second, so the trials
    beat again as soon as the storage is back, before other workers look for stale trials."""

    RETRY = 1.0  # seconds between beats while they fail

    def __init__(self, storage, trial_ids: list[int], interval: int | None):
        self.storage, self.trial_ids, self.interval = storage, trial_ids, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        from optimlab.sweeping.outage import is_transient

        raw, outage = getattr(self.storage, "inner", self.storage), getattr(self.storage, "outage", None)
        while True:
            missed = False
            for trial_id in self.trial_ids:
                try:
                    raw.record_heartbeat(trial_id)
                except Exception as e:  # noqa: BLE001 - a missed beat must not kill the worker
                    missed = True
                    if outage is not None and is_transient(e):
                        outage.failed(e)
                    log.debug("heartbeat of trial %d failed: %s", trial_id, e)
            if outage is not None and not missed:
                outage.succeeded()
            if self.stop.wait(min(self.RETRY, self.interval) if missed else self.interval):
                return

    def __enter__(self):
        if self.interval:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


Launch = Callable[[list, list[list[str]]], list[JobReturn]]  # (trials, their job overrides) -> one return each


class WorkerLoop:
    """The claim → run → tell cycle of one worker process over an open sweep.

    ``launch`` runs claimed trials as jobs (the sweep's launcher, or packs); ``config`` is the
    sweep's (each trial's params are set on it); ``continues_runs``: a continuation resumes
    its dead attempt's run folder (optimlab's own task; another app's starts its params
    afresh); ``batch_size``: the trials claimed at once (``n_jobs``, or ``pack`` when packing).
    """

    def __init__(self, sweep: OpenSweep, space: upstream.SearchSpace, session: str, stop: Stop, launch: Launch,
                 config: DictConfig, *, continues_runs: bool, batch_size: int) -> None:  # fmt: skip
        self.sweep, self.study, self.settings = sweep, sweep.study, sweep.settings
        self.space, self.session, self.stop, self.launch, self.config = space, session, stop, launch, config
        self.continues_runs, self.batch_size = continues_runs, batch_size

    def run(self) -> None:
        """Claim, run and tell trials until the study is complete, the grid is exhausted, or a stop signal came."""
        study, n_trials = self.study, self.settings.n_trials
        poll = max(0.5, min(2.0, (self.settings.heartbeat_interval or 2) / 2))
        while self.stop.signum is None:
            self.reap()  # first: a dead owner on this host gives the precise reason
            # not right after a storage outage: the trials of live workers missed beats then
            if self.sweep.heartbeat and self.sweep.outage.quiet_since(self.sweep.beats_again):
                try:
                    optuna.storages.fail_stale_trials(study)
                except StorageUnreachable:
                    raise
                except Exception as e:  # noqa: BLE001 - the stale trial is FAIL already; go on
                    log.warning("could not check for dead workers' trials: %s", e)
            trials = study.get_trials(deepcopy=False)
            check_failures(self.sweep, trials, self.session)
            done = sum(t.state in DONE for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            grid = isinstance(study.sampler, optuna.samplers.GridSampler)
            # a stopped or dead attempt counts as a visited grid point; its continuation is still due
            if (done < n_trials and grid and study.sampler.is_exhausted(study)
                    and not attempts.pending(trials, self.settings.max_retry)):  # fmt: skip
                log.info("The grid is exhausted (%d finished trials)", done)
                return
            if done >= n_trials:
                log.info("Study %s has %d finished trials (n_trials=%d)", study.study_name, done, n_trials)
                return
            if n_trials - done - running <= 0:
                if self.sweep.heartbeat:  # a running trial may still fail (or its worker die): wait
                    time.sleep(poll)
                    continue
                log.info("%d trial(s) still running elsewhere; this worker stops", running)
                return
            batch = self.claim()
            if not batch:
                continue  # another worker took the last slot: look again
            self.run_batch(batch)

    def reap(self) -> None:
        """Mark FAIL (resumable) the RUNNING trials whose worker on this host is gone."""
        study = self.study
        if not attempts.dead_on_this_host(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
            return
        with study_lock(self.sweep.storage_url, self.settings.study_name):  # look again: another worker may be at it
            for trial in attempts.dead_on_this_host(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
                owner = trial.user_attrs[attempts.OWNER]
                attempts.mark_dead(study, self.sweep.storage, trial, attempts.died_reason(owner), attempts.DIED)

    def claim(self) -> list:
        """Up to ``batch_size`` trials, as many as the study still has room for: first the
        continuations of dead or stopped attempts (same params), then new ones.

        Counting and asking happen under the study's lock, so of two workers racing for
        the last slot exactly one creates a trial, and the loser leaves nothing behind.
        Each trial records its owner (this process) before the lock is released.
        """
        study = self.study
        with study_lock(self.sweep.storage_url, self.settings.study_name):
            trials = study.get_trials(deepcopy=False)
            busy = sum(t.state in (*DONE, TrialState.RUNNING) for t in trials)
            room = min(self.batch_size, self.settings.n_trials - busy)
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            # a continuation's params come from a WAITING trial, which ask() takes first
            for dead in attempts.pending(trials, self.settings.max_retry)[: max(0, room - waiting)]:
                study.enqueue_trial(dict(dead.params), user_attrs=attempts.continuation_attrs(dead))
            batch = [study.ask() for _ in range(max(0, room))]
            owner = attempts.me()
            by_number = {t.number: t for t in trials}
            for trial in batch:
                trial.set_user_attr(attempts.OWNER, owner)
                dead = by_number.get(trial.user_attrs.get(attempts.RESUME_OF))
                for key, value in attempts.grid_point(dead).items():  # a grid's continuation keeps its point
                    self.sweep.storage.set_trial_system_attr(self.sweep.trial_id(trial), key, value)
            return batch

    def run_batch(self, batch: list) -> None:
        """Run the claimed trials and tell the study how each ended; then refresh the summary."""
        try:
            returns = self._launch(batch, self._jobs(batch))
        except StorageUnreachable as e:  # before the jobs started
            raise self.storage_stop(batch, e) from None
        if returns is None:
            return  # a stop signal ended them, or their Ray task died: they resume
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)  # back from the job's log
        ends, error = [], None
        for trial, ret in zip(batch, returns):
            try:
                ends.append(self.tell(trial, ret))
            except StorageUnreachable as e:  # its job gave up on the storage, or telling it did
                ends.append(UNTOLD)
                error = e
        lost = [trial for trial, end in zip(batch, ends) if end is UNTOLD]
        if lost:
            raise self.storage_stop(lost, error)
        full = [trial for trial, end in zip(batch, ends) if end is DISK_FULL]
        if full:
            raise disk_full_stop(self.sweep, full)
        self.sweep.write_tables()
        if self.settings.plots and self.settings.plot_every and n_done(self.study) % self.settings.plot_every == 0:
            summary.write_plots(self.study, self.sweep.sweep_dir)

    def _jobs(self, batch: list) -> list[list[str]]:
        """Each trial's job overrides (its params, a continuation's resume, its folder and
        trial link); the trials record where and by whom they run."""
        host = socket.gethostname()
        overrides = [self.space.configure(trial, self.config) for trial in batch]
        by_number = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        for trial, extra in zip(batch, overrides):
            # what re-runs this trial, recorded with it: later sweeps of the study may have other fixed overrides
            trial.set_user_attr(summary.OVERRIDES, [*extra, *self.sweep.single_run])
            dead = trial.user_attrs.get(attempts.RESUME_OF)
            # another app's continuation starts its params afresh (resume= is optimlab's run's key)
            source = attempts.resume_source(by_number, dead) if dead is not None and self.continues_runs else None
            if source is not None:
                extra += attempts.resume_overrides(source, quote)
                for step, value in attempts.earlier_reports(by_number.values(), source).items():
                    trial.report(value, step)
                log.info("trial %d continues trial %d from %s", trial.number, dead, source)
        for trial in batch:
            trial.set_user_attr("session", self.session)
            trial.set_user_attr("host", host)
            trial.set_user_attr("worker", self.settings.worker_index)
            trial.set_user_attr("run_dir", str(self.sweep.trial_dir(trial.number)))
        return [[*o, *self._job_overrides(t)] for o, t in zip(overrides, batch)]

    def _job_overrides(self, trial) -> list[str]:
        link = TrialLink(storage=self.sweep.storage_url, study=self.settings.study_name, number=trial.number)
        return [
            f"hydra.sweep.dir={quote(self.sweep.sweep_dir)}",
            f"hydra.sweep.subdir={trial_dir_name(trial.number)}",
            *(f"++hydra.job.env_set.{k}={quote(v)}" for k, v in link.env().items()),
        ]

    def _launch(self, batch: list, jobs: list[list[str]]) -> list[JobReturn] | None:
        """The jobs' returns, with heartbeats while they run; None when a stop signal ended
        them, or their Ray task died (each trial FAIL and marked to resume from its last
        finished epoch)."""
        beat = self.sweep.heartbeat
        with Heartbeat(self.sweep.storage, [self.sweep.trial_id(t) for t in batch] if beat else [], beat):
            try:
                with self.stop.job():
                    return self.launch(batch, jobs)
            except BaseException as e:
                stopped, host = status_of(e), socket.gethostname()
                lost = cluster.lost(e)
                if lost is not None:  # hydra/launcher=ray: the task's worker or node died, not the trial
                    for trial in batch:
                        attempts.mark_dead(self.study, self.sweep.storage, trial, lost, attempts.DIED)
                    self.sweep.write_tables()
                    return None  # each continues from its checkpoint (max_retry times), as a dead worker's
                if stopped:  # the worker stops now: it does not wait for an unreachable storage either
                    self.stop.signum = self.stop.signum or SIGNALS[stopped]
                    outage.stop_waiting()
                if is_disk_full(e):  # Hydra could not even write the jobs' folders
                    for trial in batch:
                        self.mark_disk_full(trial, e)
                    raise disk_full_stop(self.sweep, batch) from None
                for trial in batch:
                    if stopped:  # the run saved its last finished epoch: the trial goes on from there
                        trial.set_user_attr(attempts.RESUMABLE, True)
                        trial.set_user_attr("status", stopped)
                        self.fail(trial, f"worker pid {os.getpid()} on host {host} stopped by {SAID[stopped]} ({stopped})")
                    else:
                        self.fail(trial, f"{type(e).__name__}: {e}")
                self.sweep.write_tables()
                if not stopped:
                    raise
                return None

    def tell(self, trial, ret: JobReturn) -> None:
        """Tell the study how the trial's job ended: COMPLETE with its value(s), PRUNED, or FAIL."""
        run = RunFolder(self.sweep.trial_dir(trial.number), create=False).summary()
        if run:
            trial.set_user_attr("status", run.get("status"))
            trial.set_user_attr("epochs_completed", run.get("epochs_completed"))
            trial.set_user_attr("best_epoch", (run.get("objective") or {}).get("best_epoch"))
        if ret.status != JobStatus.COMPLETED:
            try:
                # re-raises the job's exception; Hydra's "Error executing job" line on stderr is
                # dropped: the trial's end is logged below, as one line
                with contextlib.redirect_stderr(io.StringIO()):
                    ret.return_value
            except (Pruned, optuna.TrialPruned) as e:  # optimlab's loop, or any app's (current_trial())
                tell_safely(self.study, trial, TrialState.PRUNED, None)
                log.info("trial %d PRUNED: %s", trial.number, e)
                return
            except StorageUnreachable:
                raise  # the job gave up on the storage: so does the worker (run_batch)
            except Exception as e:  # noqa: BLE001 - the trial failed; the sweep goes on
                if is_disk_full(e):
                    return self.mark_disk_full(trial, e)
                return self.fail(trial, f"{type(e).__name__}: {e}")
        values, problem = objective_values(ret.return_value, len(self.settings.directions))
        if problem:
            return self.fail(trial, problem)
        tell_safely(self.study, trial, TrialState.COMPLETE, values)
        shown = values[0] if len(values) == 1 else values
        log.info("trial %d COMPLETE: %s  %s", trial.number, shown, dict(trial.params))

    def mark_disk_full(self, trial, error: BaseException) -> object:
        """A trial stopped by a full disk: FAIL, and marked to continue from its last
        checkpoint (its params are not to blame); DISK_FULL."""
        trial.set_user_attr(attempts.RESUMABLE, True)
        trial.set_user_attr("status", "disk_full")
        self.fail(trial, f"{type(error).__name__}: {error}")
        return DISK_FULL

    def storage_stop(self, trials: list, error: StorageUnreachable) -> StorageUnreachable:
        """The one line that ends a sweep whose storage stayed unreachable past the patience.
        Each of ``trials`` (stopped, or not told) is marked to continue: in the study if it is
        back by now, else in its run folder, where the next worker's check for dead workers
        reads it (sweeping.attempts.mark_dead)."""
        for trial in trials:
            attempts.mark_storage_lost(self.sweep.trial_dir(trial.number))
            try:
                trial.set_user_attr(attempts.RESUMABLE, True)
                trial.set_user_attr("status", attempts.STORAGE_LOST)
                self.fail(trial, "its worker stopped: the storage was unreachable")
            except StorageUnreachable:
                pass  # still away: the run folder says it
        numbers = ", ".join(str(t.number) for t in trials)
        return StorageUnreachable(f"{error}: trial(s) {numbers} continue from their last checkpoint")

    def fail(self, trial, reason: str) -> None:
        trial.set_user_attr("fail_reason", reason[:1000])
        tell_safely(self.study, trial, TrialState.FAIL, None)
        log.warning("trial %d FAIL: %s", trial.number, reason)


def disk_full_stop(sweep: OpenSweep, trials: list) -> SweepStopped:
    """The one line that ends a sweep whose disk is full: no new trial is sampled into it."""
    import shutil

    folder = sweep.sweep_dir
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    with contextlib.suppress(OSError):  # the tables may not fit either; the study has it all
        sweep.write_tables()
    numbers = ", ".join(str(t.number) for t in trials)
    return SweepStopped(
        f"stopping the sweep: the disk of {folder} is full ({free}); free some space there and run the same "
        f"command again: trial(s) {numbers} continue from their last checkpoint"
    )


def tell_safely(study, trial, state, values) -> None:
    try:
        study.tell(trial, state=state, values=values)
    except RuntimeError as e:  # GridSampler stops the study when the grid is exhausted
        if "Study.stop" not in str(e):
            raise


def objective_values(returned: Any, n: int) -> tuple[list[float], str | None]:
    """The objective value(s) a job returned, one per direction (``n``); or why they are unusable."""
    iterable = isinstance(returned, Iterable) and not isinstance(returned, (str, bytes))
    items = list(returned) if iterable else [returned]
    try:
        values = [float(v) for v in items]
    except (TypeError, ValueError):
        return [], f"the run returned {returned!r}, not {'a number' if n == 1 else f'{n} numbers'}"
    if len(values) != n:
        return [], f"the run returned {len(values)} value(s) for {n} direction(s): {returned!r}"
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        return [], f"objective is {bad[0] if n == 1 else values}"
    return values, None


def check_failures(sweep: OpenSweep, trials, session: str) -> None:
    """Raise SweepStopped when the trials ``session`` finished failed beyond the sweep's limits."""
    settings = sweep.settings
    # an attempt stopped by a signal or a dead worker is not a failure of its params: it resumes
    mine = [t for t in trials if t.user_attrs.get("session") == session and t.state.is_finished()
            and not t.user_attrs.get(attempts.RESUMABLE)]  # fmt: skip
    mine.sort(key=lambda t: t.number)
    failed = [t for t in mine if t.state == TrialState.FAIL and "fail_reason" in t.user_attrs]
    if not failed:
        return
    last = failed[-1]
    if settings.max_failures is None:  # no limit of its own, but a sweep that only fails ends
        in_a_row = len(mine) - max((i + 1 for i, t in enumerate(mine) if t.state != TrialState.FAIL), default=0)
        if in_a_row >= settings.n_trials:
            # no reason in the line: with max_failure_rate=1.0 failures are not the sweep's error
            # (upstream prints none); each trial's FAIL line and trials.csv say why
            raise SweepStopped(
                f"stopping the sweep: its last {in_a_row} trials failed in a row (with no failure limit, "
                f"a sweep stops after n_trials={settings.n_trials} failures in a row); why each failed: the "
                f"fail_reason column of {sweep.sweep_dir / summary.TRIALS_FILE}"
            )
    too_many = settings.max_failures is not None and len(failed) > settings.max_failures
    if too_many or len(failed) / len(mine) > settings.max_failure_rate:
        raise SweepStopped(
            f"stopping the sweep: {len(failed)} of the {len(mine)} trials it finished failed "
            f"(hydra.sweeper.max_failures={settings.max_failures}, max_failure_rate={settings.max_failure_rate}); "
            f"last: trial {last.number}: {last.user_attrs['fail_reason']}. The study keeps its finished "
            f"trials; raise the limit and run the same command to go on."
        )
