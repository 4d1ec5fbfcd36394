"""Continue a killed or finished run from its folder: ``python train.py resume=<run folder>``,
or in place when the same command runs again into the same folder (``resume=auto``).

The resumed run writes a NEW run folder (the one Hydra makes for every command) and only
reads the old one, so a resume that fails — or is itself killed — leaves the original as
it was and can be tried again. The new folder starts with the original's history and
checkpoint, so it is a complete run by itself; ``summary.json`` records ``resumed_from``.

What is restored: model, optimizer, scheduler, GradScaler, the python/numpy/torch/CUDA
RNG states, the epoch and the history of metrics. The data order needs no state: the
batches and augmentation of epoch ``e`` are a pure function of ``(seed, e)``. On CPU the
final metrics and weights equal an uninterrupted run's bit for bit.

The config is the saved one. Overrides given with ``resume=`` may change only keys that
cannot alter the numbers already computed (:data:`HARMLESS_KEYS`, e.g. ``epochs`` when the
scheduler does not depend on it); anything else is a :class:`ConfigError` naming the keys.

**In place** (:func:`for_run_folder`): ``resume=auto`` (the default) makes a command whose
run folder (a fixed ``hydra.run.dir``: Slurm ``--requeue``, a re-submitted job) already
holds a checkpoint of the same config continue from it in that folder; ``resume=X
hydra.run.dir=X`` does the same with ``resume=``'s rules. A folder that holds another
run's results is never written: the command stops with :class:`FolderTaken`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from optimlab.config import CONFIG_DIR, knobs
from optimlab.config import overrides as ovr
from optimlab.errors import CheckpointError, ConfigError, FolderTaken
from optimlab.run.folder import Checkpoint, RunFolder, is_sweep_folder

log = logging.getLogger(__name__)

# Keys that may differ between the saved run and the resumed one: they change how far
# a run goes (epochs), which weights it tests (test_on) or what it prints (config/knobs.py),
# never the numbers of the epochs already trained.
HARMLESS_KEYS = ("epochs", "test_on", *knobs.OUTPUT_KEYS)
AUTO = "auto"  # resume=auto: continue the run folder's own checkpoint of the same config, else start fresh


@dataclass
class Resume:
    """A checked plan to continue the run in ``source``: the effective config and the checkpoint."""

    source: Path
    config: DictConfig
    checkpoint: Checkpoint
    changed: dict[str, tuple[Any, Any]]  # harmless key -> (saved, now)
    in_place: bool = False  # continuing in the source folder itself (requeue) rather than a new one

    @property
    def epoch(self) -> int:
        return self.checkpoint.epoch

    def info(self) -> dict[str, Any]:
        """What summary.json records under ``resumed_from``."""
        return {
            "run_dir": str(self.source),
            "epoch": self.epoch,
            "changed": {k: {"saved": a, "now": b} for k, (a, b) in self.changed.items()},
        }


# --------------------------------------------------------------------------- config


def flatten(container: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of a (resolved) config as ``{"a.b.c": value}``; lists are leaves."""
    if isinstance(container, dict):
        out: dict[str, Any] = {}
        for k, v in container.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: container}


def is_harmless(key: str) -> bool:
    return any(key == h or key.startswith(h + ".") for h in HARMLESS_KEYS)


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


def effective_config(saved: DictConfig, composed: DictConfig, overrides: list[str]) -> DictConfig:
    """The saved config with only the keys the user named on the command line taken from
    ``composed`` (the config Hydra built for this command), plus keys the saved config
    lacks (knobs added to optimlab since it was written)."""
    cfg = OmegaConf.create(OmegaConf.to_container(saved, resolve=False))
    OmegaConf.set_struct(cfg, False)
    for override in ovr.parse(overrides):
        key = override.key_or_group
        if key == "resume" or ovr.is_hydra(key):
            continue
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if node is not None and leaf in node:
                del node[leaf]
            continue
        key = key.replace("/", ".")
        absent = object()
        value = OmegaConf.select(composed, key, default=absent, throw_on_missing=False)
        if value is absent:  # a group of the _global_ package (sweep=<preset>): no key of its own
            continue
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=False)
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    for key in composed:
        if key not in cfg:
            cfg[key] = OmegaConf.to_container(composed, resolve=False)[key]
    cfg.resume = composed.resume
    return cfg


def with_data_target(saved: DictConfig, source: Path) -> DictConfig:
    """A config saved before datasets were built from ``data._target_`` (it names only
    ``data.name``), with the ``_target_`` of optimlab's entry of that name (``conf/data/``):
    the same loader those versions dispatched to by name. Other configs come back as they are.

    Raises ConfigError (one line) when the name is not an entry of ``conf/data/``."""
    data = saved.get("data")
    if not isinstance(data, DictConfig) or data.get("_target_") is not None:
        return saved
    name = data.get("name")
    entry = Path(CONFIG_DIR) / "data" / f"{name}.yaml"
    target = OmegaConf.load(entry).get("_target_") if entry.is_file() else None
    if target is None:
        raise ConfigError(
            f"{source}: its saved config has no data._target_ (it predates dataset entries) and data.name={name!r} "
            f"is not an entry of conf/data/, so this version cannot tell how to load its data; it cannot be resumed"
        )
    filled = OmegaConf.create(OmegaConf.to_container(saved, resolve=False))
    filled.data._target_ = target
    log.info("resume: %s's saved config predates data._target_: data=%s is loaded by %s", source, name, target)
    return filled


def config_differences(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    a, b = flatten(saved), flatten(now)
    missing = object()
    return {
        k: (a.get(k), b.get(k))
        for k in sorted(set(a) | set(b))
        if a.get(k, missing) != b.get(k, missing)
    }


def _describe(diffs: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diffs.items())


def source_of(cfg: DictConfig) -> Path | None:
    """The folder ``resume=`` names (absolute), or None for ``resume=null`` / ``resume=auto``."""
    value = cfg.get("resume")
    if value in (None, "", AUTO):
        return None
    return Path(to_absolute_path(str(value)))


def prepare(cfg: DictConfig, overrides: list[str], run_dir: str | Path | None = None) -> Resume:
    """Check everything about ``cfg.resume`` without writing anywhere; return the plan.

    ``run_dir``: the folder this command writes; when it is the ``resume=`` folder itself,
    the run continues in place (its ``.hydra/`` may already hold this command's config).

    Raises CheckpointError (missing, corrupt or mismatched checkpoint) or ConfigError
    (overrides that change more than :data:`HARMLESS_KEYS`).
    """
    source = source_of(cfg)
    in_place = run_dir is not None and Path(run_dir).absolute() == source
    if is_sweep_folder(source):
        raise CheckpointError(sweep_folder_message(source, "resume"))
    folder = RunFolder(source, create=False)
    ckpt = folder.load_checkpoint()
    saved = ckpt.config()
    saved_resolved = ckpt.resolved_config
    try:
        consistent = _resolved(saved) == saved_resolved
    except Exception:  # an interpolation that only resolves inside its original run
        consistent = True
    if not consistent:
        raise CheckpointError(f"{ckpt.path} is inconsistent: its two copies of the config differ")
    if not in_place:  # in place, Hydra has just written this command's config into .hydra/
        _check_belongs(folder, ckpt)
    filled = with_data_target(saved, source)
    if filled is not saved:
        saved, saved_resolved = filled, {**saved_resolved, "data": {**saved_resolved["data"], "_target_": filled.data._target_}}

    effective = effective_config(saved, cfg, overrides)
    try:
        effective_resolved = _resolved(effective)
    except Exception as e:
        raise ConfigError(f"resume={cfg.resume}: the config with your overrides does not resolve ({e})") from e
    diffs = config_differences(saved_resolved, effective_resolved)
    forbidden = {k: v for k, v in diffs.items() if not is_harmless(k)}
    if forbidden:
        raise ConfigError(
            f"resume={cfg.resume}: these keys differ from the saved run's config and would change its "
            f"numbers: {_describe(forbidden)}. Only {', '.join(HARMLESS_KEYS)} may change on resume "
            f"(start a new run to change anything else)"
        )
    if effective.epochs < ckpt.epoch:
        raise ConfigError(f"epochs={effective.epochs} is not valid on resume: the run already completed {ckpt.epoch} epochs")
    changed = {k: v for k, v in diffs.items() if k != "resume"}
    return Resume(source=source, config=effective, checkpoint=ckpt, changed=changed, in_place=in_place)


def for_run_folder(run_dir: str | Path, cfg: DictConfig, overrides: list[str]) -> Resume | None:
    """What a run about to write ``run_dir`` with the composed ``cfg`` must do there:
    a plan to continue the folder's own run (None: start fresh). Reads only.

    - ``resume=<run_dir>``: continue in place, with :func:`prepare`'s rules.
    - ``resume=<other folder>``: ``run_dir`` must hold no results (None; :func:`prepare`
      makes the plan).
    - ``resume=auto``: a checkpoint in ``run_dir`` whose config equals ``cfg`` (but for
      :data:`HARMLESS_KEYS`) is continued; a folder of the same config with no checkpoint
      yet (killed before its first one) starts again; an empty folder starts fresh.
    - anything else in a folder that holds results (another config, ``resume=null``, a
      sweep folder) raises :class:`FolderTaken`: nothing there may change.

    For a sweep, the same call on a trial's folder says whether to continue that trial.
    """
    path = Path(run_dir).absolute()
    source = source_of(cfg)
    if source is not None and source == path:
        return prepare(cfg, overrides, run_dir=path)
    if is_sweep_folder(path):
        raise FolderTaken(
            f"{path} is a sweep folder: a single run cannot write into it; give the run another hydra.run.dir"
        )
    folder = RunFolder(path, create=False)
    if not path.is_dir() or not folder.holds_results():
        return None
    where = f"run folder {path}"
    if source is None and cfg.get("resume") == AUTO:
        ckpt = folder.load_checkpoint() if folder.has_checkpoint else None  # a corrupt one: CheckpointError
        trained = ckpt.config() if ckpt else _hydra_config(folder)
        diffs = _differences_with(with_data_target(trained, path) if trained is not None else None, cfg)
        if diffs is not None and not diffs:
            if ckpt is None:
                log.info("resume: %s has no checkpoint yet: starting this run again there", path)
                return None
            changed = {k: v for k, v in config_differences(ckpt.resolved_config, _resolved(cfg)).items()
                       if k not in ("resume", "data._target_")}  # fmt: skip
            if cfg.epochs < ckpt.epoch:
                raise FolderTaken(
                    f"epochs={cfg.epochs}: {where} already completed {ckpt.epoch} epochs of this config; nothing is changed there"
                )
            return Resume(source=path, config=cfg, checkpoint=ckpt, changed=changed, in_place=True)
        why = f"a different config ({_describe(dict(list(diffs.items())[:4]))})" if diffs else "a run whose config cannot be compared"
    elif source is None:
        why = "a run (resume=null never continues one)"
    else:
        why = f"a run (resume={cfg.get('resume')} continues that folder's run into a new folder, not this one)"
    raise FolderTaken(
        f"{where} already holds {why}; nothing was changed there. Give this run another hydra.run.dir, "
        f"or run the folder's own command again (resume=auto) to continue it"
    )


def _hydra_config(folder: RunFolder) -> DictConfig | None:
    try:
        return folder.hydra_config()
    except Exception:  # noqa: BLE001 - a torn .hydra/config.yaml: "cannot be compared"
        return None


def _differences_with(trained: DictConfig | None, cfg: DictConfig) -> dict[str, tuple[Any, Any]] | None:
    """Non-harmless keys in which ``cfg`` differs from the config a folder's run trained
    with (its checkpoint's, else its ``.hydra/config.yaml``); None: one of them is missing
    or cannot be resolved."""
    if trained is None:
        return None
    try:
        saved = _resolved(trained)
        now = _resolved(cfg)
    except Exception:  # noqa: BLE001 - an unreadable or unresolvable config is "not the same"
        return None
    return {k: v for k, v in config_differences(saved, now).items() if not is_harmless(k)}


def sweep_folder_message(path: Path, what: str) -> str:
    """``resume=`` / ``rerun`` given a sweep's folder: say so, and how to resume a sweep."""
    command = _sweep_command(path)
    again = f" ({command})" if command else ""
    return (
        f"{path} is a sweep folder, not a run folder: to resume the sweep, run the same sweep command "
        f"again{again}; to {what} one trial, give its folder (one of {path}/<trial>)"
    )


def _sweep_command(path: Path) -> str | None:
    """The sweep's command line, from the ``multirun.yaml`` Hydra saved in its folder."""
    import shlex

    saved = path / "multirun.yaml"
    try:
        overrides = OmegaConf.load(saved).hydra.overrides
        lines = [str(o) for o in (*overrides.hydra, *overrides.task) if not str(o).startswith("hydra.mode=")]
    except Exception:  # noqa: BLE001 - no or odd multirun.yaml: the hint goes without the command
        return None
    from optimlab.config.overrides import program

    return shlex.join([*program(), "-m", *lines])


def _check_belongs(folder: RunFolder, ckpt: Checkpoint) -> None:
    """The checkpoint must be this folder's own: compare it with ``.hydra/config.yaml``
    (only for folders that were not themselves resumed: those keep Hydra's config of the
    resume command there)."""
    try:
        if folder.summary().get("resumed_from"):
            return
        hydra_cfg = folder.hydra_config()
        if hydra_cfg is None:
            return
        folder_cfg = _resolved(hydra_cfg)
    except Exception:  # noqa: BLE001 - unreadable, or interpolations that need the original run
        return
    diffs = {k: v for k, v in config_differences(folder_cfg, ckpt.resolved_config).items() if k != "resume"}
    if diffs:
        raise CheckpointError(
            f"{ckpt.path} does not belong to this run folder: its config differs from "
            f"{folder.hydra_file('config.yaml')} in " + "; ".join(f"{k}: folder {a!r}, checkpoint {b!r}" for k, (a, b) in diffs.items())
        )
