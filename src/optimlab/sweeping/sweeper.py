"""optimlab's sweeper: hydra-optuna-sweeper's search space and config keys, run as
asynchronous workers over one persistent study.

Each worker is one process looping *ask → launch one job → tell* against the shared
storage, so a free worker never waits for a slow one. ``n_workers=N`` starts N such
processes (the same command with a worker index); the same command on several hosts with
one PostgreSQL storage joins the same study. ``n_trials`` counts finished (COMPLETE or
PRUNED) trials in the study in total, so running the command again completes the study.

The parts: the settings (sweeping/settings.py), what defines a study and may not change
when it resumes (sweeping/definition.py), one worker's claim → run → tell loop
(sweeping/loop.py), the worker processes and stop signals (sweeping/workers.py), storage
outages waited out (sweeping/outage.py), the sweep folder's summary (sweeping/summary.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import random
import signal
import sys
import time
import uuid
import warnings
from pathlib import Path

import optuna
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from optimlab import objective as objectives
from optimlab.config.sweeps import SweepChecks, check_objectives, check_settings, models_deferred, refuse
from optimlab.errors import ConfigError, OptimlabError, StorageUnreachable, SweepConfigError
from optimlab.run.signals import EXIT_CODES, status_of_signal
from optimlab.sweeping import cluster, definition, loop, packing, summary, upstream, warm_start, workers
from optimlab.sweeping import storage as storages
from optimlab.sweeping.compose import ComposeCache
from optimlab.sweeping.pruning import make_pruner
from optimlab.sweeping.settings import AUTO, SweepSettings
from optimlab.sweeping.storage import _cache as storage_cache
from optimlab.sweeping.storage import absolute_url, default_storage_url, is_rdb, open_storage, redact

log = logging.getLogger(workers.SWEEP_LOGGER)



def _quiet_optuna_notes() -> None:
    """Optuna's notes about APIs a sweep uses on purpose (heartbeats and stale-trial checks
    outside Study.optimize): set when a sweep starts, not when this module is imported."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def device_type(config: DictConfig) -> str:
    """Where a sweep's trials train (cpu, cuda, mps), as a run resolves ``device``."""
    from optimlab.engine.devices import resolve_device

    try:
        return resolve_device(str(config.device.type)).type
    except Exception:  # noqa: BLE001 - the trials report a bad device themselves
        return "cpu"


class OptimlabSweeperImpl(Sweeper):
    """Hydra's sweeper: :meth:`setup` takes Hydra's context and the run's objective(s);
    :meth:`sweep` checks the sweep, opens its study, then runs as one worker
    (:class:`~optimlab.sweeping.loop.WorkerLoop`) or as the parent of ``n_workers`` worker
    processes, and turns stop signals and optimlab's errors into one line and an exit code."""

    def __init__(self, settings: SweepSettings) -> None:
        self.settings = settings
        self.pack_size = 1
        self.tasks = cluster.Tasks()  # hydra/launcher=ray: the trials' tasks in flight

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # the jobs of a search differ in values only: each shape is composed once (sweeping/compose.py)
        hydra_context = HydraContext(config_loader=ComposeCache(hydra_context.config_loader), callbacks=hydra_context.callbacks)
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        cluster.prepare(self.launcher, config.hydra.launcher)  # hydra/launcher=ray: as a sweep needs it
        # the run's own objective(s) (optimlab's train.py), unless the sweep names directions
        found = config.get("objective")
        metrics, directions = objectives.targets(found) if found is not None else ([], ["minimize"])
        if self.settings.direction is None:
            direction = directions if len(directions) > 1 else directions[0]
            self.settings = dataclasses.replace(self.settings, direction=direction)
        n = len(self.settings.directions)
        self.metric_names = metrics if n > 1 and len(metrics) == n else None

    # ------------------------------------------------------------------ sweep

    def sweep(self, arguments: list[str]) -> None:
        _quiet_optuna_notes()
        with workers.Stop() as self.stop:
            workers.die_with_parent(self.stop)
            try:
                self._sweep(arguments)
            except KeyboardInterrupt:
                self.stop.signum = signal.SIGINT
            except OptimlabError as e:  # one line, as the checks before the sweep print theirs
                # a stop signal during a storage outage: the worker stopped waiting for it; it says the signal's line
                if not (isinstance(e, StorageUnreachable) and self.stop.signum is not None):
                    sys.stderr.write(f"Error: {e}\n")
                    sys.stderr.flush()
                    raise SystemExit(e.exit_code) from None
            if self.stop.signum is not None:
                cluster.disconnect(self.tasks)  # hydra/launcher=ray: once the stopped tasks have ended
                status = status_of_signal(self.stop.signum)
                log.error("sweep %s by %s: its running trials resume when the same command runs again",
                          status, signal.Signals(self.stop.signum).name)  # fmt: skip
                workers.exit_if_worker(EXIT_CODES[status])
                raise SystemExit(EXIT_CODES[status])

    def _sweep(self, arguments: list[str]) -> None:
        try:
            choice = self.config.hydra.runtime.choices.get("hydra/sweeper/pruner")
            check_settings(self.config.hydra.sweeper)  # in any app: optimlab's SweepChecks callback leaves them here
            check_objectives(self.settings.directions, self.settings.pruner, choice)
        except ConfigError as e:
            refuse(e)  # before the first trial, and before anything is written
        s = self.settings
        space = upstream.search_space(s.params, s.search_space, s.custom_search_space, arguments)
        # optimlab's runs are seeded: trials without a search space repeat one run (another app's
        # task may be random, and upstream runs n_trials such jobs: it keeps that)
        if not space.distributions and space.extender is None and packing.is_optimlab_task(self.task_function):
            refuse(SweepConfigError(
                "the sweep has no search space (no key=interval(...)/choice(...)/range(...) on the command line or in "
                "hydra.sweeper.params): every trial would be the same run; add one, e.g. lr=interval(0.001,0.1), "
                "or sweep the seed to repeat a run: seed=range(0,5)"
            ))  # fmt: skip
        if self.settings.n_workers == AUTO:  # from where the trials train (another app's: None)
            device = device_type(self.config) if packing.is_optimlab_task(self.task_function) else None
            self.settings = dataclasses.replace(self.settings, n_workers=workers.auto(device, self.settings.n_trials))
        sweep = self._open(space)
        if self.settings.n_workers > 1 and self.settings.session is None:
            return self._run_workers(sweep)
        self._run_worker(sweep, space)

    # ------------------------------------------------------------------ the study

    def _open(self, space: upstream.SearchSpace) -> loop.OpenSweep:
        """The sweep's study, created or resumed, with its sampler; its folder and storage checked first."""
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        # bad storages and folders are one line each, before anything is written
        storages.check_writable(sweep_dir / loop.trial_dir_name(0), f"hydra.sweep.dir={sweep_dir}")
        given = self.settings.storage
        url = absolute_url(given) if given else default_storage_url(sweep_dir, self.settings.n_workers)
        storages.check(url)
        try:
            cluster.check_storage(url, self.config.hydra.launcher, redact(url))  # Ray workers elsewhere
        except SweepConfigError as e:
            refuse(e)
        # a parent's workers: their parent seeded the study
        seed = warm_start.plan(self.settings, url, space.distributions) if self.settings.session is None else None
        if self.settings.session is None and models_deferred(self.config):  # optimlab's own checks left them here
            try:
                SweepChecks().check_models(self.config)
            except ConfigError as e:
                refuse(e)
        single_run = summary.single_run(self.config, self.hydra_context.config_loader)
        base_overrides = summary.base_overrides(self.config, space.fixed) + single_run
        if self.settings.pack != 1:
            self.pack_size = packing.pack_size(self.settings.pack, device_type(self.config), self.task_function)

        study, storage = self._open_study(url)
        self._check_study(study, url)
        if self.settings.session is None:  # a parent's workers: their parent checked (and recorded) it
            try:
                definition.check(study, self._definition(space), allow_changes=self.settings.allow_changes,
                                 where=f"study {self.settings.study_name!r} in {redact(url)}")  # fmt: skip
            except SweepConfigError as e:
                refuse(e)  # before the first trial
        sweep_dir.mkdir(parents=True, exist_ok=True)
        sampler = self._make_sampler(study)
        if getattr(sampler, "func", None) is optuna.samplers.GridSampler:  # the grid comes from the search space
            grid = space.grid()
            sampler = sampler(grid)
            n_trials = min(self.settings.n_trials, math.prod(len(v) for v in grid.values()))
            self.settings = dataclasses.replace(self.settings, n_trials=n_trials)
        study.sampler = sampler
        warm_start.apply(seed, study, url)
        s = self.settings
        log.info(
            "Study %s in %s: %d/%d trials finished | sampler %s | pruner %s | direction %s | %s",
            study.study_name, redact(url), loop.n_done(study), s.n_trials,
            type(study.sampler).__name__, type(study.pruner).__name__, ", ".join(s.directions),
            f"{s.n_workers} workers" if s.n_workers > 1 else f"worker {s.worker_index}",
        )  # fmt: skip
        return loop.OpenSweep(s, study, storage, url, sweep_dir, base_overrides, single_run)

    def _open_study(self, url: str):
        """(study, its storage object), created or loaded; retried, as workers may create it at once."""
        heartbeat = self.settings.heartbeat_interval if is_rdb(url) else None
        if self.settings.session is not None:  # one of several workers: its lines say which
            storages.outage_of(url).who = f"worker {self.settings.worker_index}: "
        for attempt in range(5):  # several workers may create the tables and the study at once
            try:
                storage = open_storage(url, heartbeat, self.settings.grace_period, self.settings.storage_patience)
                return optuna.create_study(
                    study_name=self.settings.study_name, storage=storage, directions=self.settings.directions,
                    sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(self.settings.pruner),
                    load_if_exists=True,
                ), storage  # fmt: skip
            except Exception as e:  # noqa: BLE001
                storage_cache.clear()
                if attempt == 4:
                    raise storages.open_error(url, e) from None
                time.sleep(0.2 + random.random())
        raise AssertionError("unreachable")

    def _definition(self, space: upstream.SearchSpace) -> dict:
        """What defines this sweep's study (sweeping/definition.py): a job composed as its
        trials' are, without their params, and the search space."""
        fixed = [f"{k}={v}" for k, v in space.fixed.items()]
        try:
            job = self.hydra_context.config_loader.load_sweep_config(self.config, fixed)
        except Exception:  # noqa: BLE001 - the trials will say what is wrong; the sweep's own config defines it
            job = self.config
        own = packing.is_optimlab_task(self.task_function)
        return definition.of(job, space.distributions, custom=self.settings.custom_search_space, optimlab_app=own)

    def _check_study(self, study, url: str) -> None:
        """A resumed study has this sweep's directions (Optuna would load it silently)."""
        have = [d.name.lower() for d in study.directions]
        if have != self.settings.directions:
            refuse(SweepConfigError(
                f"study {self.settings.study_name!r} in {redact(url)} has direction(s) {have}, but this sweep "
                f"asks for {self.settings.directions}: use another hydra.sweeper.study_name for a new study"
            ))  # fmt: skip
        if self.metric_names and study.metric_names is None:
            study.set_metric_names(self.metric_names)

    def _make_sampler(self, study):
        """This worker's sampler (a grid's still waits for its grid)."""
        cfg = OmegaConf.to_container(self.settings.sampler, resolve=True)
        if cfg.get("seed") is not None:
            # resumed or parallel workers must not replay the same random startup trials
            cfg["seed"] = int(cfg["seed"]) + len(study.get_trials(deepcopy=False)) + 1000 * self.settings.worker_index
        return instantiate(upstream.sampler_kwargs(cfg))


    # ------------------------------------------------------------------ one worker, or many

    def _run_worker(self, sweep: loop.OpenSweep, space: upstream.SearchSpace) -> None:
        """This process as one worker; without a parent (no session given) it also writes the
        summary and checks the failure limits at the end."""
        owner = self.settings.session is None  # a lone worker writes the final summary itself
        session = self.settings.session or uuid.uuid4().hex[:8]
        worker = loop.WorkerLoop(
            sweep, space, session, self.stop, functools.partial(self._launch, sweep), self.config,
            continues_runs=packing.is_optimlab_task(self.task_function),
            batch_size=max(self.settings.n_jobs, self.pack_size),
        )  # fmt: skip
        try:
            worker.run()
        finally:
            if owner:
                sweep.write_summary()
        if owner:
            loop.check_failures(sweep, sweep.study.get_trials(deepcopy=False), session)

    def _run_workers(self, sweep: loop.OpenSweep) -> None:
        """The parent of ``n_workers`` worker processes: it starts them, waits for them, and
        writes the summary."""
        session = uuid.uuid4().hex[:8]
        commands = [
            workers.command(i, session, sweep.sweep_dir, sweep.storage_url, self.settings.study_name)
            for i in range(self.settings.n_workers)
        ]
        os.environ.update(cluster.shared_instance(self.config.hydra.launcher))  # one local Ray for all
        self.stop.rearm()  # ray.init took SIGTERM
        procs = workers.start(commands, self.stop, workers.gpus(self.settings.assign_gpus))
        try:
            codes = workers.wait(procs)
        finally:
            # a worker that gave up on the storage said so; the summary is the next command's
            gave_up = any(p.returncode == StorageUnreachable.exit_code for p in procs)
            if not gave_up:
                sweep.write_summary()
        if self.stop.signum is not None:
            return  # the workers stopped as asked; sweep() says so
        if not gave_up:
            loop.check_failures(sweep, sweep.study.get_trials(deepcopy=False), session)
        workers.check_exit_codes(codes)

    def _launch(self, sweep: loop.OpenSweep, trials: list, jobs: list[list[str]]):
        """Run the claimed trials (with their job overrides) as jobs: through Hydra's launcher,
        or in packs; one JobReturn per trial."""
        if self.pack_size > 1:
            side = packing.JobSide(self.launcher, self.hydra_context, self.config, self.task_function)
            return packing.launch(side, self.pack_size, trials, jobs)
        if cluster.connect(self.launcher, self.config.hydra.launcher):
            self.stop.rearm()  # ray.init took SIGTERM
        with self.tasks.kept(self.config.hydra.launcher, self.stop):  # a stop signal goes on to the Ray tasks
            return self.launcher.launch(jobs, initial_job_idx=trials[0].number)
