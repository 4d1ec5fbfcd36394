"""Config checks that run before any training, and optimlab's OmegaConf resolvers."""

from __future__ import annotations

import math
import secrets

from omegaconf import DictConfig, OmegaConf

from optimlab.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
INTERVALS = ("epoch", "batch", "metric")
OBJECTIVE_METRICS = ("val_acc", "val_loss", "train_loss")
DIRECTIONS = ("maximize", "minimize")


def register_resolvers() -> None:
    # Like Hydra's `now`, cached per config: a run folder's name is fixed once chosen.
    if not OmegaConf.has_resolver("optimlab.uid"):
        OmegaConf.register_new_resolver("optimlab.uid", lambda: secrets.token_hex(3), use_cache=True)


register_resolvers()


def _fail(key: str, value, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} is not valid: {allowed}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the key, the value and what is allowed."""
    lr = cfg.lr
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
        raise _fail("lr", lr, "must be a finite number > 0")
    if not isinstance(cfg.momentum, (int, float)) or not 0 <= cfg.momentum < 1:
        raise _fail("momentum", cfg.momentum, "must be in [0, 1)")
    if not isinstance(cfg.weight_decay, (int, float)) or cfg.weight_decay < 0:
        raise _fail("weight_decay", cfg.weight_decay, "must be >= 0")
    for key in ("epochs", "batch_size"):
        value = cfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _fail(key, value, "must be an integer >= 1")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or cfg.seed < 0:
        raise _fail("seed", cfg.seed, "must be an integer >= 0")
    if cfg.precision not in PRECISIONS:
        raise _fail("precision", cfg.precision, f"choose one of {', '.join(PRECISIONS)}")
    if cfg.scheduler.get("interval") not in INTERVALS:
        raise _fail("scheduler.interval", cfg.scheduler.get("interval"), f"choose one of {', '.join(INTERVALS)}")
    if cfg.objective.metric not in OBJECTIVE_METRICS:
        raise _fail("objective.metric", cfg.objective.metric, f"choose one of {', '.join(OBJECTIVE_METRICS)}")
    if cfg.objective.direction not in DIRECTIONS:
        raise _fail("objective.direction", cfg.objective.direction, f"choose one of {', '.join(DIRECTIONS)}")
