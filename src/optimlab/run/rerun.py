"""Re-run any run from its folder: ``python -m optimlab.rerun <run folder> [key=value ...]``.

Works for a single run, for one trial of a sweep, and for a sweep folder: then it re-trains
the study's best trial (:func:`optimlab.objective.best_trial`) with plots and TensorBoard
back on. The new run trains from scratch
into a NEW folder with exactly the config the original used — its resolved job config
(``.hydra/config.yaml``, or for a resumed run the config in its checkpoint), so later
edits of ``conf/`` do not leak in — and with Hydra's own settings of the original
(``.hydra/hydra.yaml``: run-dir pattern, job name, chdir, env, logging). Extra
``key=value`` overrides apply on top (e.g. ``seed=1`` to check a result's spread).

The new folder's ``summary.json`` records ``rerun_of``; a warning is logged when the code
(git commit, dirty flag) or library versions differ from the original's. The original's CPU
thread count (summary.json's ``device.threads``) is restored, so a sweep worker's trial
re-runs bit-exactly; what cannot match here (another GPU) is one line.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shlex
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

from optimlab.config import defaults, resolvers
from optimlab.errors import ConfigError, OptimlabError
from optimlab.run.folder import UNREADABLE, RunFolder, is_sweep_folder, run_folders_under
from optimlab.run.provenance import git_info, versions

log = logging.getLogger("optimlab.rerun")

RERUN_CONFIG_NAME = "optimlab_rerun"  # the saved config, written to a temp folder
# Hydra settings carried over from the original run (the rest are Hydra's runtime
# bookkeeping, or about sweeping, which a re-run of one run does not do).
HYDRA_JOB_KEYS = ("name", "chdir", "env_set", "env_copy", "config")
HYDRA_KEYS = ("job_logging", "hydra_logging", "verbose", "output_subdir")
HYDRA_GROUPS = ("hydra/job_logging", "hydra/hydra_logging")
# a sweep preset's switches that only save its time (no numbers depend on them): the best
# trial's re-run from a sweep folder puts them back to conf/config.yaml's defaults
SWEEP_SWITCHES = ("plots", "tensorboard")


def job_config(folder: RunFolder) -> DictConfig:
    """The job config the run in ``folder`` trained with (interpolations kept), to train from scratch."""
    cfg = folder.trained_config()
    if "resume" in cfg:
        cfg.resume = None  # a re-run always trains from scratch
    return cfg


def hydra_settings(folder: RunFolder) -> tuple[dict[str, Any], list[str]]:
    """(``hydra`` node to carry, group overrides) from the original's .hydra/hydra.yaml."""
    path = folder.hydra_file("hydra.yaml")
    if not path.is_file():
        return {}, []
    saved = OmegaConf.to_container(OmegaConf.load(path).hydra, resolve=False)  # patterns stay patterns
    job = saved.get("job") or {}
    pattern = (saved.get("run") or {}).get("dir")
    if not pattern or "${" not in pattern:  # a fixed folder (hydra.run.dir=...) is not reused
        pattern = default_run_dir()
    node: dict[str, Any] = {"run": {"dir": pattern}, "job": {}}
    for key in HYDRA_JOB_KEYS:
        if key in job:
            node["job"][key] = job[key]
    # A sweep hands each trial its identity through env_set (OPTIMLAB_TRIAL_ID, ...): a
    # re-run is no trial and must not report into the study.
    env_set = node["job"].get("env_set") or {}
    node["job"]["env_set"] = {k: v for k, v in env_set.items() if not str(k).startswith("OPTIMLAB_")}
    for key in HYDRA_KEYS:
        if key in saved:
            node[key] = saved[key]
    if saved.get("mode") == "RUN" and saved.get("callbacks"):
        node["callbacks"] = saved["callbacks"]
    choices = (saved.get("runtime") or {}).get("choices") or {}
    groups = [f"{g}={choices[g]}" for g in HYDRA_GROUPS if choices.get(g)]
    return node, groups


def default_run_dir() -> str:
    """The project's run-dir pattern (conf/config.yaml), unresolved."""
    from optimlab.config import CONFIG_DIR, CONFIG_NAME

    return OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / f"{CONFIG_NAME}.yaml").hydra.run, resolve=False)["dir"]


def new_run_dir(pattern: str) -> Path:
    """Where the re-run goes: the resolved run-dir pattern (the original's, or
    ``hydra.run.dir=...``), never an existing folder (a fixed folder the original was sent
    to, or the original itself)."""
    path = Path(pattern).absolute()
    if path.exists() and any(path.iterdir()):
        path = path.with_name(f"{path.name}_rerun_{datetime.now().strftime('%H%M%S%f')}")
    return path


def best_trial_folder(sweep: Path) -> Path:
    """The run folder of a sweep's best trial, by optimlab's one rule
    (:func:`optimlab.objective.best_trial`): best value among its completed runs, ties to the
    earliest trial; from the run folders' summary.json alone (any sweeper, a grid multirun)."""
    from optimlab.objective import best_trial

    found = []
    for path in run_folders_under(sweep):
        summary = RunFolder(path, create=False).summary()
        goal = summary.get("objective") or {}
        if summary.get("status") == "completed" and goal.get("value") is not None:
            found.append((path, goal))
    if not found:
        raise ConfigError(f"{sweep} has no completed trial to re-run (yet); give one trial's folder to re-run it")
    if any(goal.get("values") is not None for _, goal in found):
        raise ConfigError(f"{sweep} has several objectives (a Pareto front, no one best trial): give the folder of "
                          f"one of its Pareto-optimal trials (optimization_results.yaml's solutions)")  # fmt: skip
    direction = str(found[0][1].get("direction") or "maximize")
    number = lambda item: _natural(str(item[0].relative_to(sweep)))  # noqa: E731 - trial_0007 -> 7
    return best_trial(found, lambda item: item[1]["value"], number, direction)[0]


def _natural(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def restore_numerics(summary: Any) -> list[str]:
    """Set what the original's summary says decides its numbers besides the config: the CPU
    thread count (a sweep's worker ran with cores/N threads; a sum over threads rounds
    differently); one line each for what a re-run here cannot match."""
    import torch

    if not isinstance(summary, dict):
        return []
    device = summary.get("device") or {}
    notes = []
    threads = device.get("threads")
    if device.get("type") == "cpu" and isinstance(threads, int) and threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
        log.info("rerun: %d CPU threads, as the original", threads)
    if device.get("type") not in (None, "cpu") and device.get("name") and device.get("name") != _device_name(device["type"]):
        notes.append(f"the original ran on {device['name']}, this machine has {_device_name(device['type']) or 'none'}: "
                     f"the numbers may differ in the last bits")  # fmt: skip
    return notes


def _device_name(kind: str) -> str | None:
    import torch

    if kind == "cuda":
        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return "Apple MPS" if kind == "mps" and torch.backends.mps.is_available() else None


def provenance_warnings(summary: Any) -> list[str]:
    if not isinstance(summary, dict) or not summary:
        return ["the original has no summary.json: cannot compare code and library versions"]
    found = []
    old_git, now_git = summary.get("git") or {}, git_info()
    if old_git.get("commit") != now_git.get("commit"):
        found.append(f"git commit differs: original {old_git.get('commit')}, now {now_git.get('commit')}")
    if old_git.get("dirty"):
        found.append("the original ran from a checkout with uncommitted changes")
    old_v, now_v = summary.get("versions") or {}, versions()
    for name in sorted(set(old_v) & set(now_v)):
        if old_v[name] != now_v[name]:
            found.append(f"{name} version differs: original {old_v[name]}, now {now_v[name]}")
    return found


def main(task: Callable[[DictConfig], Any], argv: list[str] | None = None) -> int:
    """``task``: the training task (``optimlab.cli.train``), run by Hydra's job runner."""
    parser = argparse.ArgumentParser(
        prog="python -m optimlab.rerun",
        description="Re-run a run (single or sweep trial) from its folder into a new folder.",
    )
    parser.add_argument("run_dir", help="the run folder to re-run (outputs/... or multirun/.../<trial>)")
    parser.add_argument("overrides", nargs="*", help="key=value changes on top of the saved config")
    parser.add_argument("--print", action="store_true", help="print the composed config and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    resolvers.register()

    original = RunFolder(Path(args.run_dir).absolute(), create=False)
    try:
        if not original.path.is_dir():
            raise ConfigError(f"run folder {args.run_dir} does not exist")
        extra: list[str] = []
        if is_sweep_folder(original.path):  # the study's best trial, with its plots back on
            original = RunFolder(best_trial_folder(original.path), create=False)
            extra = [f"{key}={str(defaults()[key]).lower()}" for key in SWEEP_SWITCHES]
            log.info("rerun: the best trial of %s is %s", args.run_dir, original.path.name)
        summary = original.read_summary()
        if summary is UNREADABLE:
            raise ConfigError(
                f"{original.summary_path} is not valid JSON (the run folder is damaged); nothing was run: "
                f"restore that file, or move it away to re-run from the folder's config without it"
            )
        job = job_config(original)
    except OptimlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - an unreadable folder is the user's to see, in one line
        print(f"error: cannot read the config of {original.path}: {e}", file=sys.stderr)
        return 2
    hydra_node, groups = hydra_settings(original)
    for warning in provenance_warnings(summary) + restore_numerics(summary):
        log.warning("rerun: %s", warning)

    with tempfile.TemporaryDirectory(prefix="optimlab-rerun-") as tmp, hydra_context(tmp):
        primary = OmegaConf.create({**OmegaConf.to_container(job, resolve=False), "hydra": hydra_node})
        (Path(tmp) / f"{RERUN_CONFIG_NAME}.yaml").write_text(OmegaConf.to_yaml(primary))
        cfg = compose([*groups, *extra, *args.overrides])
        if args.print:
            print(OmegaConf.to_yaml({k: v for k, v in cfg.items() if k != "hydra"}))
            return 0
        target = new_run_dir(str(cfg.hydra.run.dir))
        cfg.hydra.run.dir = str(target)
        log.info("rerun: %s -> %s", original.path, target)
        code = _run_job(task, cfg)
    new = RunFolder(target, create=False)
    if new.summary():
        new.update_summary(
            rerun_of=str(original.path),
            command=shlex.join(["python", "-m", "optimlab.rerun", args.run_dir, *args.overrides]),
        )
    return code


@contextlib.contextmanager
def hydra_context(config_dir: str) -> Iterator[None]:
    """Hydra initialised on the saved config's folder, for composing and running the job."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import setup_globals

    setup_globals()  # Hydra's `now` resolver for the run-dir pattern
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=config_dir, job_name="train"):
        yield


def compose(overrides: list[str]) -> DictConfig:
    """Hydra's compose API over the saved config: the same composition ``train.py`` does."""
    from hydra import compose as hydra_compose

    cfg = hydra_compose(RERUN_CONFIG_NAME, overrides=overrides, return_hydra_config=True)
    OmegaConf.set_readonly(cfg.hydra, False)
    cfg.hydra.run.dir = str(cfg.hydra.run.dir)  # resolved once, now
    return cfg


class _NoCallbacks:
    """Hydra's job runner notifies callbacks; a re-run has none of the sweep's."""

    def on_job_start(self, **kwargs: Any) -> None: ...

    def on_job_end(self, **kwargs: Any) -> None: ...


def _run_job(task: Callable[[DictConfig], Any], cfg: DictConfig) -> int:
    """Run optimlab's task with Hydra's own job runner (the one its launchers use): the new
    folder gets ``.hydra/`` and the log file exactly as ``python train.py`` makes them."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import JobStatus, run_job
    from hydra.types import HydraContext

    context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=_NoCallbacks())
    try:
        ret = run_job(task_function=task, config=cfg, job_dir_key="hydra.run.dir", job_subdir_key=None,
                      hydra_context=context)  # fmt: skip
    except SystemExit as e:  # the task's own exit for a user error or a stop signal
        return e.code if isinstance(e.code, int) else 1
    if ret.status == JobStatus.FAILED:
        try:
            ret.return_value  # re-raises the task's exception
        except Exception as e:  # noqa: BLE001 - reported in one line
            log.error("rerun failed: %s: %s", type(e).__name__, e)
        return 1
    return 0

