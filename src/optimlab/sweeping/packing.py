"""Packed trials (``hydra.sweeper.pack``): a worker trains several trials of its study at
once in its own process, each still a trial of its own (own folder, reports, pruning, result).

A pack holds only trials whose configs have the same shapes: trials are grouped by the
values of every swept key outside :data:`PACKABLE` (model, batch size, epochs, data,
precision, the optimizer or scheduler chosen, …); a group of one runs through the
launcher as usual. Each trial of a pack is composed as Hydra's launchers compose a job
(``load_sweep_config``), gets the Hydra files a job gets (``.hydra/config.yaml``,
``hydra.yaml``, ``overrides.yaml``), its log file, Hydra's job callbacks and the job's
``env_set``, is checked as the task checks a run, and trains in
:func:`optimlab.run.packed.run_packed`. What comes back is one
``JobReturn`` per trial, so the sweeper tells the study each result as it does for a job.

A trial that is pruned or diverges leaves the pack and its slot stays empty until the
pack ends (see README, "Packed trials").
"""

from __future__ import annotations

import contextlib
import copy
import logging
import logging.config
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, env_override
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from optimlab.config import knobs
from optimlab.observe.context import TrialLink
from optimlab.config import overrides as ovr
from optimlab.config.sweeps import PACK_AUTO

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


class _Job:
    """One trial of a pack, composed as Hydra's launchers compose a job."""

    def __init__(self, trial, overrides: list[str], config: DictConfig):
        self.trial, self.ret = trial, JobReturn(overrides=overrides, status=JobStatus.UNKNOWN)
        self.config = config
        self.run_dir = os.path.abspath(os.path.join(str(config.hydra.sweep.dir), str(config.hydra.sweep.subdir)))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = self.run_dir
        HydraConfig.instance().set_config(config)
        self.cfg = copy.deepcopy(config)
        with read_write(self.cfg), open_dict(self.cfg):
            del self.cfg["hydra"]
        self.ret.cfg, self.ret.hydra_cfg = self.cfg, copy.deepcopy(HydraConfig.instance().cfg)
        self.task_overrides = [str(o) for o in OmegaConf.to_container(config.hydra.overrides.task)]

    def write_hydra_files(self) -> None:
        """What Hydra's ``run_job`` writes into a job's folder before the task starts."""
        Path(self.run_dir).mkdir(parents=True, exist_ok=True)
        if self.config.hydra.output_subdir is None:
            return
        out = Path(self.run_dir) / str(self.config.hydra.output_subdir)
        out.mkdir(parents=True, exist_ok=True)
        for name, node in (("config.yaml", self.cfg), ("hydra.yaml", self.ret.hydra_cfg),
                           ("overrides.yaml", self.config.hydra.overrides.task)):  # fmt: skip
            with open(out / name, "w", encoding="utf-8") as f:
                f.write(OmegaConf.to_yaml(node))

    def done(self, outcome: Any) -> None:
        failed = isinstance(outcome, BaseException)
        self.ret.status = JobStatus.FAILED if failed else JobStatus.COMPLETED
        self.ret.return_value = outcome
        self.ret.working_dir = os.getcwd()
        self.ret.task_name = str(self.config.hydra.job.name)


def _log_to_every_folder(jobs: list[_Job]) -> None:
    """The job logging of the first trial, with its log file(s) once per trial: each trial's
    log holds the pack's lines (its own and its pack-mates')."""
    first = jobs[0].config.hydra
    node = OmegaConf.to_container(first.job_logging, resolve=True) if first.job_logging else None
    if not node or not isinstance(node, dict):
        configure_log(first.job_logging, first.verbose)
        return
    handlers = node.get("handlers") or {}
    files = {name: h for name, h in handlers.items() if isinstance(h, dict) and "filename" in h}
    for job in jobs[1:]:
        own = OmegaConf.to_container(job.config.hydra.job_logging, resolve=True).get("handlers") or {}
        for name in files:
            if name in own:
                handlers[f"{name}_{job.trial.number}"] = own[name]
    root = node.setdefault("root", {})
    ours = list(root.get("handlers", []))
    root["handlers"] = ours + [name for name in handlers if name not in ours and name.rpartition("_")[0] in ours]
    logging.config.dictConfig(node)


def launch_pack(sweeper, trials: list, jobs: list[list[str]]) -> list[JobReturn]:
    """Train ``trials`` (with their job overrides) as one pack; one JobReturn per trial."""
    from optimlab.config import validate
    from optimlab.run import resume
    from optimlab.run.folder import RunFolder
    from optimlab.run.packed import run_packed
    from optimlab.sweeping.pruning import TRIAL_ENV, PruningCallback

    loader, callbacks = sweeper.hydra_context.config_loader, sweeper.hydra_context.callbacks
    saved_hydra = HydraConfig.instance().cfg
    packed: list[_Job] = []
    started: list[_Job] = []  # Hydra's job callbacks: on_job_start, then on_job_end with the result
    alone: list[int] = []
    returns: list[JobReturn | None] = [None] * len(trials)
    with contextlib.ExitStack() as locks:
        try:
            for i, (trial, overrides) in enumerate(zip(trials, jobs)):
                config = loader.load_sweep_config(sweeper.config, list(overrides))
                with open_dict(config):
                    config.hydra.job.id = trial.number
                    config.hydra.job.num = trial.number
                job = _Job(trial, list(overrides), config)
                if resume.source_of(job.cfg) is not None:
                    alone.append(i)  # a continuation runs as a job of its own
                    continue
                returns[i] = job.ret
                job.write_hydra_files()
                callbacks.on_job_start(config=job.config, task_function=sweeper.task_function)
                started.append(job)
                try:
                    locks.enter_context(RunFolder(job.run_dir, create=False).lock())  # as the task takes it
                    validate(job.cfg)  # bad input fails here, before any data or model is built
                except Exception as e:  # noqa: BLE001 - this trial fails as its job would
                    job.done(e)
                    continue
                packed.append(job)
            if packed:
                _log_to_every_folder(packed)
                multi = len(sweeper._directions()) > 1  # Optuna prunes single-objective studies only
                # the job's environment (hydra.job.env_set), less the trial link a lone job reads
                env = {str(k): str(v) for k, v in packed[0].config.hydra.job.env_set.items() if k != TRIAL_ENV}
                with env_override(env):
                    outcomes = run_packed(
                        [j.cfg for j in packed], [j.run_dir for j in packed], [j.task_overrides for j in packed],
                        [[] if multi else [PruningCallback.for_run(j.trial, j.cfg)] for j in packed],
                        [TrialLink(storage=sweeper.storage_url, study=sweeper.study_name, number=j.trial.number) for j in packed],
                    )  # fmt: skip
                for job, outcome in zip(packed, outcomes):
                    job.done(outcome)
            for job in (j for j in started if j.ret.status != JobStatus.UNKNOWN):
                HydraConfig.instance().set_config(job.config)
                callbacks.on_job_end(config=job.config, job_return=job.ret)
        finally:
            HydraConfig.instance().cfg = saved_hydra
            configure_log(sweeper.config.hydra.hydra_logging, sweeper.config.hydra.verbose)
    for i in alone:
        returns[i] = sweeper.launcher.launch([jobs[i]], initial_job_idx=trials[i].number)[0]
    return returns  # type: ignore[return-value]


def launch(sweeper, size: int, trials: list, jobs: list[list[str]]) -> list[JobReturn]:
    """The claimed ``trials`` with their job overrides, in packs of at most ``size``; one JobReturn each."""
    returns: list[JobReturn | None] = [None] * len(trials)
    for group in groups([[o for o in job if not ovr.is_hydra(ovr.key_of(o))] for job in jobs], size):
        picked = [trials[i] for i in group]
        if len(group) == 1:
            got = sweeper.launcher.launch([jobs[group[0]]], initial_job_idx=picked[0].number)
        else:
            log.info("pack of %d trials: %s", len(group), ", ".join(str(t.number) for t in picked))
            for trial in picked:
                trial.set_user_attr("pack", [t.number for t in picked])  # who trained together
            got = launch_pack(sweeper, picked, [jobs[i] for i in group])
        for i, ret in zip(group, got):
            returns[i] = ret
    return returns  # type: ignore[return-value]
