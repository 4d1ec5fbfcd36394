"""The top-level knobs (``lr``, ``momentum``, …) and the one answer to "which of them does
this config read": the CLI's ignored-knob warning, the sweep checks, packing and the
run's hyperparameters all ask here. Also the one list of keys that never change a run's
numbers (:data:`OUTPUT_KEYS`): a resumed run and a resumed sweep may change those."""

from __future__ import annotations

import copy
from collections.abc import Iterable

from omegaconf import DictConfig, OmegaConf

# THE top-level knobs (conf/config.yaml sets their values)
KNOBS = ("lr", "momentum", "weight_decay", "epochs", "batch_size", "seed", "deterministic")
# the knobs that reach a run only through interpolations in the groups' configs
# (optimizer: lr: ${lr}): an option that does not interpolate one ignores it
INTERPOLATED = ("lr", "momentum", "weight_decay")
# THE keys that never change a run's numbers: what it prints, logs and plots, whether it
# continues a folder, how often it saves (resumes are bit-exact). A resumed run may change
# them (and epochs, run/resume.py); a study's definition leaves them out (sweeping/definition.py).
OUTPUT_KEYS = ("resume", "quiet", "tensorboard", "logger", "plots", "profile", "checkpoint.every")


def is_output_key(key: str) -> bool:
    """Whether ``key`` (``a.b.c``) is one of :data:`OUTPUT_KEYS` or inside one."""
    return any(key == k or key.startswith(k + ".") for k in OUTPUT_KEYS)


def unread(job: DictConfig, keys: Iterable[str]) -> list[str]:
    """The interpolated knobs among ``keys`` that no node of ``job`` (without Hydra's node)
    reads: the resolved config, the knob itself left out, is the same whatever its value.
    Empty when an interpolation cannot be resolved here (no guess)."""
    found = []
    for key in dict.fromkeys(k.lstrip("+") for k in keys):
        if key not in INTERPOLATED or key not in job:
            continue
        resolved = []
        for probe in (0.123, 0.456):
            trial = copy.deepcopy(job)
            trial[key] = probe
            try:
                container = OmegaConf.to_container(trial, resolve=True)
            except Exception:  # noqa: BLE001 - an interpolation we cannot resolve here: do not guess
                return []
            container.pop(key, None)
            container.pop("hydra", None)
            resolved.append(container)
        if resolved[0] == resolved[1]:
            found.append(key)
    return found
