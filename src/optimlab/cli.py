"""``python train.py [overrides]``: one training run; ``-m`` for a sweep.

compose (Hydra) → check once → run → the objective back to Hydra (and a sweeper).
"""

from __future__ import annotations

import logging
import math
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from optimlab.config import CONFIG_DIR, CONFIG_NAME, resolvers, validate
from optimlab.config.hints import home_hints, missing_plugin, suggest_overrides
from optimlab.errors import OptimlabError, StorageError
from optimlab.run import signals

log = logging.getLogger("optimlab")



def train(cfg: DictConfig) -> float:
    """The task: train once as ``cfg`` (and Hydra's runtime) says; the objective value."""
    from optimlab.observe.context import TrialLink
    from optimlab.run import resume
    from optimlab.run.folder import RunFolder, discard_unstarted
    from optimlab.sweeping.pruning import trial_callbacks

    hc = HydraConfig.get()
    # unresolved: an override such as lr=${nope} is validate()'s to report, not a crash here
    overrides = [str(o) for o in OmegaConf.to_container(hc.overrides.task)]
    run_dir = hc.runtime.output_dir
    folder = RunFolder(run_dir, create=False)
    started, plan = False, None
    try:
        # one process per folder (a single run took the lock before Hydra wrote; a sweep trial takes it here)
        with folder.lock():
            plan = resume.for_run_folder(run_dir, cfg, overrides)  # reads only
            if plan is None and resume.source_of(cfg) is not None:
                plan = resume.prepare(cfg, overrides, run_dir=run_dir)  # resume=<folder>: into this new one
            if plan is not None:
                cfg = plan.config  # the saved run's config (+ harmless overrides)
            validate(cfg)  # bad input fails here, before any data or model is built
            if hc.mode == RunMode.RUN:
                _warn_ignored_knobs(cfg, overrides)
            from optimlab.run.runner import run

            started = True
            # a single run names its folder first and last (a sweep's trials: only in their own log)
            say = log.debug if hc.mode == RunMode.MULTIRUN else log.info
            say("run folder: %s", run_dir)
            try:
                return run(cfg, run_dir, overrides, callbacks=trial_callbacks(cfg), resume=plan, sweep=TrialLink.from_env())
            finally:
                say("run folder: %s", run_dir)
    except OptimlabError as e:
        # a resume's new folder says why it holds no run; a folder with results is never touched
        if not started and cfg.get("resume") not in (None, resume.AUTO) and not folder.holds_results():
            from optimlab.run.runner import record_error

            record_error(cfg, run_dir, overrides, e)
        if hc.mode == RunMode.MULTIRUN:
            return _job_failed(hc, run_dir, e)  # the sweeper records the failure and goes on
        if isinstance(e, StorageError):
            logging.raiseExceptions = False  # a full disk must not add a log handler's traceback to the line
        log.error("%s", e)  # one clear line, no traceback wall
        # a bad command leaves no folder of its own behind (a resume's new folder says why, above)
        if not started and plan is None and cfg.get("resume") in (None, resume.AUTO):
            discard_unstarted(folder, log_file=f"{hc.job.name}.log", up_to=hc.runtime.cwd)
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, signals.Preempted) as e:
        if hc.mode == RunMode.MULTIRUN:
            raise  # a stop signal stops the whole sweep
        status = signals.status_of(e)
        # the runner has already saved the state and written summary.json
        log.error("%s (%s): state saved in %s (summary.json status: %s)", status, signals.SAID[status], run_dir, status)
        sys.exit(signals.EXIT_CODES[status])


# a grid multirun's failed jobs (Hydra's basic sweeper and launcher, in this process): its last line
FAILED_JOBS: list[tuple[str, OptimlabError]] = []


def _job_failed(hc, run_dir: str, error: OptimlabError) -> float:
    """A multirun job ended on ``error``. An Optuna sweeper records it as a failed trial and
    goes on: re-raised for it. Hydra's basic sweeper would stop at the first failed job's
    traceback once the batch is done: the job says why in one line instead, the other jobs
    run, and :func:`main` ends the multirun with one line and the first failure's exit code."""
    basic = str(hc.sweeper.get("_target_", "")).endswith(".BasicSweeper")
    if not basic or not str(hc.launcher.get("_target_", "")).endswith(".BasicLauncher"):
        raise error
    log.error("%s (%s)", error, run_dir)
    FAILED_JOBS.append((run_dir, error))
    return math.nan


def _report_failed_jobs() -> None:
    failed = FAILED_JOBS[:]
    FAILED_JOBS.clear()
    if failed:
        where = "; ".join(f"{path} ({e.status})" for path, e in failed)
        sys.stderr.write(f"error: {len(failed)} job{'s' if len(failed) > 1 else ''} of the multirun failed: {where}\n")
        sys.exit(failed[0][1].exit_code)


# what to do when the optimizer does not read a knob set on the command line
UNREAD_HINTS = {
    "momentum": "use optimizer=momentum or optimizer=nesterov for SGD with momentum",
    "weight_decay": "choose an optimizer that reads it",
}


def _warn_ignored_knobs(cfg: DictConfig, overrides: list[str]) -> None:
    """A knob set on the command line that the chosen config does not read (plain sgd
    fixes momentum at 0): one warning line each, the run goes on."""
    from optimlab.config import knobs
    from optimlab.config import overrides as ovr

    given = ovr.job_values(overrides)
    choice = HydraConfig.get().runtime.choices.get("optimizer")
    for knob in knobs.unread(cfg, given):
        hint = UNREAD_HINTS.get(knob, "choose an optimizer that reads it")
        if cfg.get(knob):
            log.warning("%s=%s is ignored: optimizer=%s does not read ${%s}; %s", knob, given[knob], choice, knob, hint)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=CONFIG_NAME)
def hydra_main(cfg: DictConfig) -> float:
    return train(cfg)


def main() -> None:
    """``python train.py``: Hydra's main, plus a "did you mean" when Hydra rejects an override.

    Hydra reports a bad command line (unknown group option, unknown key) itself, from
    ``run_and_report``, and exits 1 without handing the exception to anyone. Rather than
    patch Hydra's private internals, we let it print its message and exit, then check the
    overrides (still in ``sys.argv``) against the config and add the closest match. This
    uses only Hydra's public compose/parser API and costs nothing when the command is fine.
    """
    resolvers.register()
    FAILED_JOBS.clear()
    missing = missing_plugin(sys.argv[1:])
    if missing:  # before Hydra: it would print its group's options, not what to install
        sys.stderr.write(f"Error: {missing}\n")
        sys.exit(2)
    try:
        hydra_main()
    except SystemExit as e:
        if e.code == 1:  # Hydra's own error exit (optimlab's errors exit 2, signals 130/143)
            hints = home_hints(sys.argv[1:])
            try:
                hints += suggest_overrides(sys.argv[1:], CONFIG_DIR)
            except Exception:  # a hint must never hide Hydra's message
                pass
            for line in hints:
                sys.stderr.write(line + "\n")
        raise
    _report_failed_jobs()


if __name__ == "__main__":
    main()
