"""Packed trials (``hydra.sweeper.pack``): a worker trains several trials of its study at
once in its own process, each still a trial of its own (own folder, reports, pruning, result).

A pack holds only trials whose configs have the same shapes: trials are grouped by the
values of every swept key outside :data:`PACKABLE` (model, batch size, epochs, data,
precision, the optimizer or scheduler chosen, …); a group of one runs through the
launcher as usual. Each trial of a pack is composed as Hydra's launchers compose a job
(``load_sweep_config``) and is a job of Hydra's own ``run_job``, which writes its
``.hydra/`` files, sets its ``env_set``, calls the job callbacks and builds its
``JobReturn``; its task takes the folder's lock, checks the config and builds the trial's
pruning callback as optimlab's task does for a lone trial, then joins the pack, which
trains in :func:`optimlab.run.packed.run_packed` (see :class:`_PackJobs`). The sweeper tells
the study each result as it does for any job.

A trial that is pruned or diverges leaves the pack and its slot stays empty until the
pack ends (see README, "Packed trials").
"""

from __future__ import annotations

import contextlib
import functools
import logging
import logging.config
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, run_job
from omegaconf import DictConfig, OmegaConf, open_dict

from optimlab.config import knobs
from optimlab.config import overrides as ovr
from optimlab.config.sweeps import PACK_AUTO
from optimlab.observe.context import TRIAL_ENV, TrialLink
from optimlab.sweeping.pruning import trial_callbacks

log = logging.getLogger(__name__)

# Keys whose values may differ within a pack: hyperparameters that leave every tensor's shape
# (and the batches) as they are. Any other swept key (model, batch_size, epochs, data.*,
# precision, optimizer=/scheduler= choices, …) splits the trials into separate packs.
PACKABLE = {*knobs.INTERPOLATED, "seed"}
PACKABLE_LEAVES = {
    "optimizer": {"lr", "momentum", "weight_decay", "betas", "eps", "alpha", "dampening"},
    "scheduler": {"gamma", "factor", "eta_min", "max_lr", "pct_start", "div_factor", "final_div_factor", "T_max",
                  "step_size", "milestones", "patience", "threshold", "min_lr"},
}  # fmt: skip
# measured on a 2-core CPU: packs of 4–16 seed CNNs ran at 0.58–0.73× of one after another
CPU_NOTE = "packed trials train slower than one after another on a CPU (0.58-0.73x measured); pack is for GPUs"
# what pack=auto means per device type; no GPU measurement has shown a win yet, so it packs nowhere
AUTO_PACK = {"cuda": 1, "mps": 1, "cpu": 1}
TASK_MODULE = "optimlab.cli"  # packing runs optimlab's own task; another task function runs unpacked


def is_optimlab_task(task_function: Any) -> bool:
    """Whether the sweep runs optimlab's own train task (packing and mid-run continuation need
    its loop and run folder); any other Hydra app's task runs its trials plainly."""
    return getattr(task_function, "__module__", None) == TASK_MODULE


def is_packable(key: str) -> bool:
    key = key.lstrip("+~")
    if key in PACKABLE:
        return True
    group, _, leaf = key.partition(".")
    return leaf in PACKABLE_LEAVES.get(group, ())


def shape_key(overrides: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The trial's values of the keys that may change shapes: trials with equal keys may share a pack."""
    found = {}
    for o in ovr.parse(overrides):
        key = o.key_or_group
        if ovr.is_hydra(key) or is_packable(key):
            continue
        found[key] = o.get_value_element_as_str()
    return tuple(sorted(found.items()))


def groups(trial_overrides: Sequence[Sequence[str]], size: int) -> list[list[int]]:
    """Indices of the trials, grouped by :func:`shape_key`, in packs of at most ``size``, in
    the order the trials came."""
    by_key: dict[tuple, list[list[int]]] = {}
    for i, overrides in enumerate(trial_overrides):
        packs = by_key.setdefault(shape_key(overrides), [[]])
        if len(packs[-1]) >= size:
            packs.append([])
        packs[-1].append(i)
    return sorted((p for packs in by_key.values() for p in packs), key=lambda p: p[0])


def pack_size(value: Any, device_type: str, task_function: Any = None) -> int:
    """The trials a worker trains at once for ``hydra.sweeper.pack=value`` (checked already) on
    ``device_type`` (``cpu``, ``cuda``, ``mps``); logs one line when it packs or when auto does not."""
    if task_function is not None and not is_optimlab_task(task_function) and value != 1:
        log.info("hydra.sweeper.pack=%s: the task is not optimlab's train.py, so its trials run one at a time", value)
        return 1
    if value == PACK_AUTO:
        size = AUTO_PACK.get(device_type, 1)
        log.info("hydra.sweeper.pack=auto on %s: %d trial(s) at a time (packing is on only where it is "
                 "measured to pay; none yet)", device_type, size)  # fmt: skip
        return size
    size = int(value)
    if size > 1:
        note = f"; {CPU_NOTE}" if device_type == "cpu" else ""
        log.info("hydra.sweeper.pack=%d on %s: up to %d trials train at once%s", size, device_type, size, note)
    return size


# --------------------------------------------------------------------------- one pack


@dataclass(frozen=True)
class JobSide:
    """What Hydra gave the sweeper to start jobs with: its launcher, its context (config loader,
    job callbacks), the sweep's config and the app's task."""

    launcher: Any
    hydra_context: Any
    config: DictConfig
    task_function: Any


@dataclass
class _Member:
    """A trial that joined the pack: what :func:`run_packed` needs of it, and its outcome."""

    config: DictConfig  # the job's config, Hydra's node included (its log file)
    cfg: DictConfig  # the task's config
    run_dir: str
    overrides: list[str]
    callbacks: list
    trial: TrialLink | None  # which trial of which study (the loggers group a study's trials)
    outcome: Any = None


class _PackJobs:
    """The trials of one pack, each a job of Hydra's own ``run_job``.

    ``run_job`` writes a job's ``.hydra/`` files, sets its ``hydra.job.env_set`` (the trial
    link), calls the job callbacks and builds its ``JobReturn``, and it runs one task to
    the end; so the jobs nest: trial k's task takes its folder's lock, checks its config and
    builds its pruning callback exactly as optimlab's task does for a lone trial
    (``trial_callbacks``), then runs trial k+1's job inside its own; the innermost trains
    every trial that joined, and each task then returns (or raises) its own outcome. The job
    callbacks thus run ``on_job_start`` 1..K, then ``on_job_end`` K..1, well nested.
    """

    def __init__(self, side: JobSide, configs: list[DictConfig]):
        self.side, self.configs = side, configs
        self.returns: list[JobReturn] = []
        self.members: list[_Member] = []

    def run(self) -> list[JobReturn]:
        try:
            self._job(0)
        finally:
            configure_log(self.side.config.hydra.hydra_logging, self.side.config.hydra.verbose)
        return self.returns

    def _job(self, k: int) -> None:
        if k == len(self.configs):
            return self._train()

        @functools.wraps(self.side.task_function)  # the job callbacks see the app's task
        def task(cfg: DictConfig) -> Any:
            return self._task(cfg, k)

        self.returns.insert(0, run_job(
            task_function=task, config=self.configs[k], job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir", hydra_context=self.side.hydra_context, configure_logging=False,
        ))  # fmt: skip

    def _task(self, cfg: DictConfig, k: int) -> Any:
        """Trial k's task: its lock and checks as optimlab's task takes them, the rest of the pack
        inside, then its outcome."""
        from optimlab.config import validate
        from optimlab.run.folder import RunFolder

        hc = HydraConfig.get()
        member, error = None, None
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(RunFolder(hc.runtime.output_dir, create=False).lock())  # as the task takes it
                validate(cfg)  # bad input fails here, before any data or model is built
                member = _Member(
                    self.configs[k], cfg, hc.runtime.output_dir, [str(o) for o in OmegaConf.to_container(hc.overrides.task)],
                    trial_callbacks(cfg), TrialLink.from_env(),
                )  # fmt: skip
                self.members.append(member)
            except Exception as e:  # noqa: BLE001 - this trial fails as its job would; the pack goes on
                error = e
            self._job(k + 1)
        if member is None:
            raise error  # type: ignore[misc]
        if isinstance(member.outcome, BaseException):
            raise member.outcome
        return member.outcome

    def _train(self) -> None:
        """Inside the last job: every trial that joined trains in one pack."""
        from optimlab.run.packed import run_packed

        if not self.members:
            return
        ms = self.members
        _log_to_every_folder([m.config for m in ms])
        with _unset(TRIAL_ENV):  # the pack is no one trial's job: its runs report through their callbacks
            outcomes = run_packed([m.cfg for m in ms], [m.run_dir for m in ms], [m.overrides for m in ms],
                                  [m.callbacks for m in ms], [m.trial for m in ms])  # fmt: skip
        for member, outcome in zip(ms, outcomes):
            member.outcome = outcome


@contextlib.contextmanager
def _unset(name: str):
    """The environment variable ``name`` unset inside, as it was after."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def _log_to_every_folder(configs: list[DictConfig]) -> None:
    """The job logging of the first trial, with its log file(s) once per trial: each trial's
    log holds the pack's lines (its own and its pack-mates')."""
    first = configs[0].hydra
    node = OmegaConf.to_container(first.job_logging, resolve=True) if first.job_logging else None
    if not node or not isinstance(node, dict):
        configure_log(first.job_logging, first.verbose)
        return
    handlers = node.get("handlers") or {}
    files = {name: h for name, h in handlers.items() if isinstance(h, dict) and "filename" in h}
    for config in configs[1:]:
        own = OmegaConf.to_container(config.hydra.job_logging, resolve=True).get("handlers") or {}
        for name in files:
            if name in own:
                handlers[f"{name}_{config.hydra.job.num}"] = own[name]
    root = node.setdefault("root", {})
    ours = list(root.get("handlers", []))
    root["handlers"] = ours + [name for name in handlers if name not in ours and name.rpartition("_")[0] in ours]
    logging.config.dictConfig(node)


def launch_pack(side: JobSide, trials: list, jobs: list[list[str]]) -> list[JobReturn]:
    """Train ``trials`` (with their job overrides) as one pack; one JobReturn per trial. A
    continuation (``resume=``) runs as a job of its own, after the pack."""
    from optimlab.run import resume

    configs = []
    for trial, overrides in zip(trials, jobs):
        config = side.hydra_context.config_loader.load_sweep_config(side.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = config.hydra.job.num = trial.number  # as a launcher numbers the job
        configs.append(config)
    packed = [i for i, config in enumerate(configs) if resume.source_of(config) is None]
    returns = dict(zip(packed, _PackJobs(side, [configs[i] for i in packed]).run()))
    for i in (i for i in range(len(trials)) if i not in returns):
        returns[i] = side.launcher.launch([jobs[i]], initial_job_idx=trials[i].number)[0]
    return [returns[i] for i in range(len(trials))]


def launch(side: JobSide, size: int, trials: list, jobs: list[list[str]]) -> list[JobReturn]:
    """The claimed ``trials`` with their job overrides, in packs of at most ``size``; one JobReturn
    each. A trial alone runs through the sweep's launcher; a pack as Hydra's launchers run a job."""
    returns: list[JobReturn | None] = [None] * len(trials)
    for group in groups([[o for o in job if not ovr.is_hydra(ovr.key_of(o))] for job in jobs], size):
        picked = [trials[i] for i in group]
        if len(group) == 1:
            got = side.launcher.launch([jobs[group[0]]], initial_job_idx=picked[0].number)
        else:
            log.info("pack of %d trials: %s", len(group), ", ".join(str(t.number) for t in picked))
            for trial in picked:
                trial.set_user_attr("pack", [t.number for t in picked])  # who trained together
            got = launch_pack(side, picked, [jobs[i] for i in group])
        for i, ret in zip(group, got):
            returns[i] = ret
    return returns  # type: ignore[return-value]
