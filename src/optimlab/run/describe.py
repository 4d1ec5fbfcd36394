"""A run described from its config for people and loggers: a title and flat hyperparameters."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from optimlab.config import knobs
from optimlab.config import overrides as ovr

HPARAM_KNOBS = (*(k for k in knobs.KNOBS if k != "deterministic"), "precision")


def short_name(node: Any) -> str:
    """``torch.optim.SGD`` → ``SGD``."""
    target = node.get("_target_") if node is not None else None
    return str(target).rsplit(".", 1)[-1] if target else ""


def effective_momentum(cfg: DictConfig) -> float | None:
    """The momentum the optimizer really uses: plain sgd ignores the knob, Adam's is beta1."""
    optimizer = cfg.get("optimizer") or {}
    if "momentum" in optimizer:
        return float(optimizer.get("momentum"))
    if "betas" in optimizer:
        return float(optimizer.get("betas")[0])
    return None


def title(cfg: DictConfig) -> str:
    """``TuduiCNN · SGD lr=0.01 momentum=0.9 · StepLR · cifar10 · bs 64``"""
    knobs = f"lr={cfg.lr:g}"
    momentum = effective_momentum(cfg)
    if momentum:
        knobs += f" momentum={momentum:g}"
    if cfg.weight_decay:
        knobs += f" wd={cfg.weight_decay:g}"
    return (
        f"{short_name(cfg.model)} · {short_name(cfg.optimizer)} {knobs} · {short_name(cfg.scheduler)} · "
        f"{cfg.data.name} · bs {cfg.batch_size}"
    )


def hparams(cfg: DictConfig, overrides: list[str] = ()) -> dict[str, Any]:
    """The run's hyperparameters as flat scalars (bool/int/float/str), for loggers."""
    found: dict[str, Any] = {k: cfg.get(k) for k in HPARAM_KNOBS if cfg.get(k) is not None}
    momentum = effective_momentum(cfg)
    if momentum is not None:
        found["momentum"] = momentum
    for group in ("model", "optimizer", "scheduler"):
        name = short_name(cfg.get(group))
        if name:
            found[group] = name
    if cfg.get("data") is not None:
        found["data"] = cfg.data.get("name")
    # command-line overrides win: `optimizer=momentum` says more than `SGD`
    for key, value in ovr.job_values(overrides).items():
        found[key] = _scalar(value)
    return {k: v for k, v in found.items() if isinstance(v, (bool, int, float, str))}


def _scalar(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
