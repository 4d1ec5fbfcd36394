"""Continue a killed or finished run from its folder: ``python train.py resume=<run folder>``.

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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from optimlab.config import overrides as ovr
from optimlab.errors import CheckpointError, ConfigError
from optimlab.run.folder import Checkpoint, RunFolder

log = logging.getLogger(__name__)

# Keys that may differ between the saved run and the resumed one: they change how far
# a run goes or what it prints, never the numbers of the epochs already trained.
HARMLESS_KEYS = ("epochs", "resume", "quiet", "tensorboard", "plots", "checkpoint.every")


@dataclass
class Resume:
    """A checked plan to continue the run in ``source``: the effective config and the checkpoint."""

    source: Path
    config: DictConfig
    checkpoint: Checkpoint
    changed: dict[str, tuple[Any, Any]]  # harmless key -> (saved, now)

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
        value = OmegaConf.select(composed, key, throw_on_missing=False)
        if isinstance(value, DictConfig):
            value = OmegaConf.to_container(value, resolve=False)
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    for key in composed:
        if key not in cfg:
            cfg[key] = OmegaConf.to_container(composed, resolve=False)[key]
    cfg.resume = composed.resume
    return cfg


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


def prepare(cfg: DictConfig, overrides: list[str]) -> Resume:
    """Check everything about ``cfg.resume`` without writing anywhere; return the plan.

    Raises CheckpointError (missing, corrupt or mismatched checkpoint) or ConfigError
    (overrides that change more than :data:`HARMLESS_KEYS`).
    """
    source = Path(to_absolute_path(str(cfg.resume)))
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
    _check_belongs(folder, ckpt)

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
    return Resume(source=source, config=effective, checkpoint=ckpt, changed=changed)


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
