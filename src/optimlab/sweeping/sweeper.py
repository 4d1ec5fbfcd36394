"""optimlab's sweeper: hydra-optuna-sweeper's search space and config keys, run as
asynchronous workers over one persistent study.

Each worker is one process looping *ask → launch one job → tell* against the shared
storage, so a free worker never waits for a slow one. ``n_workers=N`` starts N such
processes (the same command with a worker index); the same command on several hosts with
one PostgreSQL storage joins the same study. ``n_trials`` counts finished (COMPLETE or
PRUNED) trials in the study in total, so running the command again completes the study.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus, configure_log
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from optimlab import objective as objectives
from optimlab.config import overrides as ovr
from optimlab.config.sweeps import check_objectives, check_settings, refuse
from optimlab.errors import ConfigError, OptimlabError, Pruned, SweepConfigError, SweepStopped
from optimlab.run.folder import RunFolder
from optimlab.run.signals import EXIT_CODES, SAID, SIGNALS, status_of, status_of_signal
from optimlab.sweeping import attempts, packing, summary, upstream, workers
from optimlab.sweeping import storage as storages
from optimlab.sweeping.compose import ComposeCache
from optimlab.observe.context import TrialLink
from optimlab.sweeping.pruning import make_pruner
from optimlab.sweeping.storage import _cache as storage_cache
from optimlab.sweeping.storage import absolute_url, default_storage_url, is_rdb, open_storage, redact, study_lock

log = logging.getLogger(__name__)

# optuna's notes about APIs this module uses on purpose (heartbeats and stale-trial checks
# outside Study.optimize)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")

DONE = (TrialState.COMPLETE, TrialState.PRUNED)
# overrides a sweep with n_workers > 1 sets on the worker processes it starts
WORKER_KEYS = (
    "hydra.sweep.dir", "hydra.sweeper.storage", "hydra.sweeper.study_name", "hydra.sweeper.n_workers",
    "hydra.sweeper.worker_index", "hydra.sweeper.session", "hydra.sweeper.sampler.seed",
)  # fmt: skip


def trial_dir_name(number: int) -> str:
    return f"trial_{number:04d}"


quote = upstream.quote  # every value the sweeper generates passes through it


class Heartbeat:
    """Records a heartbeat for running trials every ``interval`` s (RDB storages)."""

    def __init__(self, storage, trial_ids: list[int], interval: int | None):
        self.storage, self.trial_ids, self.interval = storage, trial_ids, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            for trial_id in self.trial_ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception as e:  # noqa: BLE001 - a missed beat must not kill the worker
                    log.debug("heartbeat of trial %d failed: %s", trial_id, e)
            if self.stop.wait(self.interval):
                return

    def __enter__(self):
        if self.interval:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


class OptimlabSweeperImpl(Sweeper):
    def __init__(
        self,
        sampler: DictConfig,
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float | None,
        search_space: DictConfig | None,
        custom_search_space: str | None,
        params: DictConfig | None,
        pruner: DictConfig | None = None,
        n_workers: int = 1,
        max_failures: int | str | None = "auto",
        heartbeat_interval: int | None = 10,
        grace_period: int | None = 30,
        max_retry: int = 1,
        assign_gpus: bool = True,
        plots: bool = True,
        plot_every: int = 0,
        top_k: int = 5,
        worker_index: int = 0,
        session: str | None = None,
        pack: Any = 1,
    ) -> None:
        self.sampler_cfg, self.pruner_cfg, self.direction = sampler, pruner, direction
        self.storage, self.study_name, self.n_trials, self.n_jobs = storage, study_name or "optimlab", n_trials, max(1, n_jobs)
        self.max_failure_rate = 1.0 if max_failure_rate is None else max_failure_rate
        # auto: optimlab's 5 failures; with an explicit max_failure_rate only the rate, as upstream
        max_failures = (5 if max_failure_rate is None else None) if max_failures == "auto" else max_failures
        self.params, self.search_space_cfg, self.custom_search_space = params, search_space, custom_search_space
        self.n_workers, self.max_failures = max(1, n_workers), max_failures
        self.heartbeat_interval, self.grace_period, self.max_retry = heartbeat_interval, grace_period, max_retry
        self.assign_gpus, self.plots, self.plot_every, self.top_k = assign_gpus, plots, plot_every, top_k
        self.worker_index, self.session = worker_index, session
        self.pack, self.pack_size = pack, 1

    # ------------------------------------------------------------------ setup

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # the jobs of a search differ in values only: each shape is composed once (sweeping/compose.py)
        hydra_context = HydraContext(config_loader=ComposeCache(hydra_context.config_loader), callbacks=hydra_context.callbacks)
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        # the run's own objective(s) (optimlab's train.py), unless the sweep names directions
        found = config.get("objective")
        metrics, directions = objectives.targets(found) if found is not None else ([], ["minimize"])
        if self.direction is None:
            self.direction = directions if len(directions) > 1 else directions[0]
        n = len(self._directions())
        self.metric_names = metrics if n > 1 and len(metrics) == n else None

    def _make_sampler(self, offset: int):
        cfg = OmegaConf.to_container(self.sampler_cfg, resolve=True)
        if cfg.get("seed") is not None:
            # resumed or parallel workers must not replay the same random startup trials
            cfg["seed"] = int(cfg["seed"]) + offset + 1000 * self.worker_index
        return instantiate(upstream.sampler_kwargs(cfg))

    def _directions(self) -> list[str]:
        return objectives.directions(self.direction)

    def _open_study(self, url: str) -> optuna.Study:
        heartbeat = self.heartbeat_interval if is_rdb(url) else None
        for attempt in range(5):  # several workers may create the tables and the study at once
            try:
                storage = open_storage(url, heartbeat, self.grace_period)
                self.storage_obj = storage
                return optuna.create_study(
                    study_name=self.study_name, storage=storage, directions=self._directions(),
                    sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(self.pruner_cfg), load_if_exists=True,
                )  # fmt: skip
            except Exception as e:  # noqa: BLE001
                storage_cache.clear()
                if attempt == 4:
                    raise storages.open_error(url, e) from None
                time.sleep(0.2 + random.random())
        raise AssertionError("unreachable")

    @property
    def _heartbeat(self) -> bool:
        return bool(self.heartbeat_interval) and is_rdb(self.storage_url)

    # ------------------------------------------------------------------ sweep

    def sweep(self, arguments: list[str]) -> None:
        with workers.Stop() as self.stop:
            workers.die_with_parent(self.stop)
            try:
                self._sweep(arguments)
            except KeyboardInterrupt:
                self.stop.signum = signal.SIGINT
            except OptimlabError as e:  # one line, as the checks before the sweep print theirs
                sys.stderr.write(f"Error: {e}\n")
                sys.stderr.flush()
                raise SystemExit(e.exit_code) from None
            if self.stop.signum is not None:
                status = status_of_signal(self.stop.signum)
                log.error("sweep %s by %s: its running trials resume when the same command runs again",
                          status, signal.Signals(self.stop.signum).name)  # fmt: skip
                raise SystemExit(EXIT_CODES[status])

    def _sweep(self, arguments: list[str]) -> None:
        try:
            choice = self.config.hydra.runtime.choices.get("hydra/sweeper/pruner")
            check_settings(self.config.hydra.sweeper)  # in any app: optimlab's SweepChecks callback leaves them here
            check_objectives(self._directions(), self.pruner_cfg, choice)
        except ConfigError as e:
            refuse(e)  # before the first trial, and before anything is written
        space = upstream.search_space(self.params, self.search_space_cfg, self.custom_search_space, arguments)
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        self.storage_url = absolute_url(self.storage) if self.storage else default_storage_url(self.sweep_dir, self.n_workers)
        # bad storages and folders are one line each, before anything is written
        storages.check_writable(self.sweep_dir / trial_dir_name(0), f"hydra.sweep.dir={self.sweep_dir}")
        storages.check(self.storage_url)
        self.base_overrides = self._base_overrides(space)
        if self.pack != 1:
            self.pack_size = packing.pack_size(self.pack, self._device_type(), self.task_function)

        study = self._open_study(self.storage_url)
        self._check_study(study)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.sampler = self._make_sampler(offset=len(study.get_trials(deepcopy=False)))
        if self._is_grid():
            grid = space.grid()
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
        study.sampler = self.sampler
        log.info(
            "Study %s in %s: %d/%d trials finished | sampler %s | pruner %s | direction %s | %s",
            study.study_name, redact(self.storage_url), self._n_done(study), self.n_trials,
            type(self.sampler).__name__, type(study.pruner).__name__, ", ".join(self._directions()),
            f"{self.n_workers} workers" if self.n_workers > 1 else f"worker {self.worker_index}",
        )  # fmt: skip

        if self.n_workers > 1 and self.session is None:
            return self._run_workers(study)
        owner = self.session is None  # a lone worker writes the final summary itself
        session = self.session or uuid.uuid4().hex[:8]
        try:
            self._worker_loop(study, space, session)
        finally:
            if owner:
                self._finalize(study)
        if owner:
            self._check_failures(study.get_trials(deepcopy=False), session)

    def _device_type(self) -> str:
        """Where this worker's trials train (cpu, cuda, mps), as a run resolves ``device``."""
        from optimlab.engine.devices import resolve_device

        try:
            return resolve_device(str(self.config.device.type)).type
        except Exception:  # noqa: BLE001 - the trials report a bad device themselves
            return "cpu"

    def _check_study(self, study) -> None:
        """A resumed study has this sweep's directions (Optuna would load it silently)."""
        have = [d.name.lower() for d in study.directions]
        if have != self._directions():
            refuse(SweepConfigError(
                f"study {self.study_name!r} in {redact(self.storage_url)} has direction(s) {have}, but this sweep "
                f"asks for {self._directions()}: use another hydra.sweeper.study_name for a new study"
            ))  # fmt: skip
        if self.metric_names and study.metric_names is None:
            study.set_metric_names(self.metric_names)

    def _is_grid(self) -> bool:
        return getattr(self.sampler, "func", None) is optuna.samplers.GridSampler

    def _base_overrides(self, space: upstream.SearchSpace) -> list[str]:
        """What every trial runs with besides its params: the command line's fixed overrides,
        then the fixed values of ``hydra.sweeper.params`` (a single run does not read those)."""
        cli = [o.input_line for o in ovr.parse(self.config.hydra.overrides.task) if not o.is_sweep_override()]
        typed = {ovr.key_of(line) for line in cli}
        fixed = [f"{k}={v}" for k, v in space.fixed.items() if ovr.key_of(f"{k}={v}") not in typed]
        return cli + fixed + (["hydra.mode=RUN"] if self._multirun_by_config(cli) else [])

    def _multirun_by_config(self, overrides: list[str]) -> bool:
        """Whether these overrides alone start a sweep (a preset with ``hydra.mode: MULTIRUN``,
        as lightning-hydra-template's hparams_search): the best trial's command then needs
        ``hydra.mode=RUN`` to be a single run."""
        from hydra.types import RunMode

        try:
            cfg = self.hydra_context.config_loader.load_configuration(
                config_name=self.config.hydra.job.config_name, overrides=list(overrides), run_mode=RunMode.RUN,
            )  # fmt: skip
            return cfg.hydra.mode == RunMode.MULTIRUN
        except Exception:  # noqa: BLE001 - only the printed command depends on it
            return False

    @staticmethod
    def _n_done(study) -> int:
        return sum(t.state in DONE for t in study.get_trials(deepcopy=False))

    # ------------------------------------------------------------------ one worker

    def _worker_loop(self, study, space: upstream.SearchSpace, session: str) -> None:
        poll = max(0.5, min(2.0, (self.heartbeat_interval or 2) / 2))
        while self.stop.signum is None:
            self._reap(study)  # first: a dead owner on this host gives the precise reason
            if self._heartbeat:
                try:
                    optuna.storages.fail_stale_trials(study)
                except Exception as e:  # noqa: BLE001 - the stale trial is FAIL already; go on
                    log.warning("could not check for dead workers' trials: %s", e)
            trials = study.get_trials(deepcopy=False)
            self._check_failures(trials, session)
            done = sum(t.state in DONE for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            grid = isinstance(self.sampler, optuna.samplers.GridSampler)
            # a stopped or dead attempt counts as a visited grid point; its continuation is still due
            if done < self.n_trials and grid and self.sampler.is_exhausted(study) and not attempts.pending(trials, self.max_retry):
                log.info("The grid is exhausted (%d finished trials)", done)
                return
            if done >= self.n_trials:
                log.info("Study %s has %d finished trials (n_trials=%d)", study.study_name, done, self.n_trials)
                return
            free = self.n_trials - done - running
            if free <= 0:
                if self._heartbeat:  # a running trial may still fail (or its worker die): wait
                    time.sleep(poll)
                    continue
                log.info("%d trial(s) still running elsewhere; this worker stops", running)
                return
            batch = self._claim(study)
            if not batch:
                continue  # another worker took the last slot: look again
            self._run_batch(study, batch, space, session)

    def _reap(self, study) -> None:
        """Mark FAIL (resumable) the RUNNING trials whose worker on this host is gone."""
        if not attempts.dead_on_this_host(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
            return
        with study_lock(self.storage_url, self.study_name):  # look again: another worker may be at it
            for trial in attempts.dead_on_this_host(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
                owner = trial.user_attrs[attempts.OWNER]
                attempts.mark_dead(study, self.storage_obj, trial, attempts.died_reason(owner), attempts.DIED)

    def _claim(self, study) -> list:
        """Up to ``n_jobs`` trials (``pack`` when packing), as many as the study still has room
        for: first the continuations of dead or stopped attempts (same params), then new ones.

        Counting and asking happen under the study's lock, so of two workers racing for
        the last slot exactly one creates a trial, and the loser leaves nothing behind.
        Each trial records its owner (this process) before the lock is released.
        """
        with study_lock(self.storage_url, self.study_name):
            trials = study.get_trials(deepcopy=False)
            busy = sum(t.state in (*DONE, TrialState.RUNNING) for t in trials)
            room = min(max(self.n_jobs, self.pack_size), self.n_trials - busy)
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            # a continuation's params come from a WAITING trial, which ask() takes first
            for dead in attempts.pending(trials, self.max_retry)[: max(0, room - waiting)]:
                study.enqueue_trial(dict(dead.params), user_attrs=attempts.continuation_attrs(dead))
            batch = [study.ask() for _ in range(max(0, room))]
            owner = attempts.me()
            by_number = {t.number: t for t in trials}
            for trial in batch:
                trial.set_user_attr(attempts.OWNER, owner)
                dead = by_number.get(trial.user_attrs.get(attempts.RESUME_OF))
                for key, value in attempts.grid_point(dead).items():  # a grid's continuation keeps its point
                    self.storage_obj.set_trial_system_attr(self._trial_id(trial), key, value)
            return batch

    def _job_overrides(self, trial) -> list[str]:
        link = TrialLink(storage=self.storage_url, study=self.study_name, number=trial.number)
        return [
            f"hydra.sweep.dir={quote(self.sweep_dir)}",
            f"hydra.sweep.subdir={trial_dir_name(trial.number)}",
            *(f"++hydra.job.env_set.{k}={quote(v)}" for k, v in link.env().items()),
        ]

    def _trial_id(self, trial) -> int:
        storage = self.storage_obj
        return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(self.study_name), trial.number)

    def _run_batch(self, study, batch, space: upstream.SearchSpace, session: str) -> None:
        host = socket.gethostname()
        overrides = [space.configure(trial, self.config) for trial in batch]
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        for trial, extra in zip(batch, overrides):
            dead = trial.user_attrs.get(attempts.RESUME_OF)
            # another app's continuation starts its params afresh (resume= is optimlab's run's key)
            source = attempts.resume_source(by_number, dead) if dead is not None and packing.is_optimlab_task(self.task_function) else None
            if source is not None:
                extra += attempts.resume_overrides(source, quote)
                for step, value in attempts.earlier_reports(by_number.values(), source).items():
                    trial.report(value, step)
                log.info("trial %d continues trial %d from %s", trial.number, dead, source)
        for trial in batch:
            trial.set_user_attr("session", session)
            trial.set_user_attr("host", host)
            trial.set_user_attr("worker", self.worker_index)
            trial.set_user_attr("run_dir", str(self.sweep_dir / trial_dir_name(trial.number)))
        jobs = [[*o, *self._job_overrides(t)] for o, t in zip(overrides, batch)]
        beat = self.heartbeat_interval if self._heartbeat else None
        with Heartbeat(self.storage_obj, [self._trial_id(t) for t in batch] if beat else [], beat):
            try:
                with self.stop.job():
                    if self.pack_size > 1:
                        returns = packing.launch(self, self.pack_size, batch, jobs)
                    else:
                        returns = self.launcher.launch(jobs, initial_job_idx=batch[0].number)
            except BaseException as e:
                stopped = status_of(e)
                for trial in batch:
                    if stopped:  # the run saved its last finished epoch: the trial goes on from there
                        trial.set_user_attr(attempts.RESUMABLE, True)
                        trial.set_user_attr("status", stopped)
                        self._fail(study, trial, f"worker pid {os.getpid()} on host {host} stopped by {SAID[stopped]} ({stopped})")
                    else:
                        self._fail(study, trial, f"{type(e).__name__}: {e}")
                summary.write_tables(study, self.sweep_dir, self.base_overrides, redact(self.storage_url))
                if stopped:
                    if self.stop.signum is None:
                        self.stop.signum = SIGNALS[stopped]
                    return
                raise
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)  # back from the job's log
        for trial, ret in zip(batch, returns):
            self._tell(study, trial, ret)
        summary.write_tables(study, self.sweep_dir, self.base_overrides, redact(self.storage_url))
        if self.plots and self.plot_every and self._n_done(study) % self.plot_every == 0:
            summary.write_plots(study, self.sweep_dir)

    def _tell(self, study, trial, ret) -> None:
        run = RunFolder(self.sweep_dir / trial_dir_name(trial.number), create=False).summary()
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
                self._tell_safely(study, trial, TrialState.PRUNED, None)
                log.info("trial %d PRUNED: %s", trial.number, e)
                return
            except Exception as e:  # noqa: BLE001 - the trial failed; the sweep goes on
                return self._fail(study, trial, f"{type(e).__name__}: {e}")
        values, problem = self._values(ret.return_value)
        if problem:
            return self._fail(study, trial, problem)
        self._tell_safely(study, trial, TrialState.COMPLETE, values)
        shown = values[0] if len(values) == 1 else values
        log.info("trial %d COMPLETE: %s  %s", trial.number, shown, dict(trial.params))

    def _values(self, returned: Any) -> tuple[list[float], str | None]:
        """The objective value(s) a job returned, one per direction; or why they are unusable."""
        n = len(self._directions())
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

    def _fail(self, study, trial, reason: str) -> None:
        trial.set_user_attr("fail_reason", reason[:1000])
        self._tell_safely(study, trial, TrialState.FAIL, None)
        log.warning("trial %d FAIL: %s", trial.number, reason)

    @staticmethod
    def _tell_safely(study, trial, state, values) -> None:
        try:
            study.tell(trial, state=state, values=values)
        except RuntimeError as e:  # GridSampler stops the study when the grid is exhausted
            if "Study.stop" not in str(e):
                raise

    def _check_failures(self, trials, session: str) -> None:
        # an attempt stopped by a signal or a dead worker is not a failure of its params: it resumes
        mine = [t for t in trials if t.user_attrs.get("session") == session and t.state.is_finished()
                and not t.user_attrs.get(attempts.RESUMABLE)]  # fmt: skip
        mine.sort(key=lambda t: t.number)
        failed = [t for t in mine if t.state == TrialState.FAIL and "fail_reason" in t.user_attrs]
        if not failed:
            return
        last = failed[-1]
        if self.max_failures is None:  # no limit of its own, but a sweep that only fails ends
            in_a_row = len(mine) - max((i + 1 for i, t in enumerate(mine) if t.state != TrialState.FAIL), default=0)
            if in_a_row >= self.n_trials:
                # no reason in the line: with max_failure_rate=1.0 failures are not the sweep's error
                # (upstream prints none); each trial's FAIL line and trials.csv say why
                raise SweepStopped(
                    f"stopping the sweep: its last {in_a_row} trials failed in a row (with no failure limit, "
                    f"a sweep stops after n_trials={self.n_trials} failures in a row); why each failed: the "
                    f"fail_reason column of {self.sweep_dir / summary.TRIALS_FILE}"
                )
        too_many = self.max_failures is not None and len(failed) > self.max_failures
        if too_many or len(failed) / len(mine) > self.max_failure_rate:
            raise SweepStopped(
                f"stopping the sweep: {len(failed)} of the {len(mine)} trials it finished failed "
                f"(hydra.sweeper.max_failures={self.max_failures}, max_failure_rate={self.max_failure_rate}); "
                f"last: trial {last.number}: {last.user_attrs['fail_reason']}. The study keeps its finished "
                f"trials; raise the limit and run the same command to go on."
            )

    # ------------------------------------------------------------------ many workers

    def _gpus(self) -> list[str]:
        if not self.assign_gpus:
            return []
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            return [d for d in visible.split(",") if d.strip()]
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []

    def _worker_command(self, index: int, session: str) -> list[str]:
        # the command's own overrides (Hydra's flags such as -m pass through), minus the worker's
        keep = [a for a in sys.argv[1:] if a.startswith("-") or ovr.key_of(a) not in WORKER_KEYS]
        extra = [
            f"hydra.sweep.dir={quote(self.sweep_dir)}",
            f"hydra.sweeper.storage={quote(self.storage_url)}",
            f"hydra.sweeper.study_name={quote(self.study_name)}",
            "hydra.sweeper.n_workers=1",
            f"hydra.sweeper.worker_index={index}",
            f"hydra.sweeper.session={quote(session)}",  # 8e771234 would parse as a float
        ]
        return [sys.executable, sys.argv[0], *keep, *extra]

    def _run_workers(self, study) -> None:
        session = uuid.uuid4().hex[:8]
        gpus = self._gpus()
        procs = []
        for i in range(self.n_workers):
            env = dict(os.environ)
            if len(gpus) > 1:
                env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            # N workers on one machine share its cores: N processes each running torch's
            # default of one thread per core oversubscribe the CPU and all slow down.
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.n_workers)))
            procs.append(subprocess.Popen(self._worker_command(i, session), env=workers.child_env(env)))
            self.stop.children = procs  # SIGTERM to this process goes on to every worker
            log.info("worker %d started (pid %d)%s", i, procs[-1].pid,
                     f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if len(gpus) > 1 else "")  # fmt: skip
        if self.stop.signum is not None:  # it came while the workers were starting
            self.stop.forward()
        try:
            codes = [p.wait() for p in procs]
        except KeyboardInterrupt:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            for p in procs:
                p.wait()
            raise
        finally:
            self._finalize(study)
        if self.stop.signum is not None:
            return  # the workers stopped as asked; sweep() says so
        self._check_failures(study.get_trials(deepcopy=False), session)
        bad = [(i, c) for i, c in enumerate(codes) if c != 0]
        if bad:
            raise SweepStopped(
                "worker(s) " + ", ".join(f"{i} exited with code {c}" for i, c in bad)
                + "; their errors are above. Run the same command to resume the study."
            )

    # ------------------------------------------------------------------ summary

    def _finalize(self, study) -> None:
        try:
            results = summary.write_tables(study, self.sweep_dir, self.base_overrides, redact(self.storage_url))
            if self.plots:
                summary.write_plots(study, self.sweep_dir)
        except Exception as e:  # noqa: BLE001 - the study is safe in its storage whatever happens here
            log.warning("could not write the sweep summary: %s", e)
            return
        log.info("Trials: %s | summary in %s", results.get("trials"), self.sweep_dir)
        if len(study.directions) > 1:
            log.info("Pareto-optimal trials (%d):\n%s", len(results.get("solutions", [])), summary.top_table(study, self.top_k))
            return
        log.info("Top trials:\n%s", summary.top_table(study, self.top_k))
        if "best_value" in results:
            log.info("Best value %.6g (trial %d): %s", results["best_value"], results["best_trial"], results["best_params"])
            log.info("Re-run the best trial: %s", results["best_command"])
