"""Devices, precision and seeding: plain strings in, torch objects out."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from optimlab.errors import DeviceError

log = logging.getLogger(__name__)


def available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(kind: str) -> torch.device:
    """``auto`` → the best present device; a named one must be present (the config checks
    have already made sure ``kind`` is one of auto, cpu, cuda, mps)."""
    available = available_devices()
    if kind == "auto":
        chosen = next(d for d in ("cuda", "mps", "cpu") if d in available)
        log.info("device=auto chose %s (available: %s)", chosen, ", ".join(available))
        return torch.device(chosen)
    if kind not in available:
        raise DeviceError(
            f"device={kind} was asked for but is not present on this machine; "
            f"available: {', '.join(available)} (device=auto picks the best of them)"
        )
    return torch.device(kind)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise DeviceError("precision='fp16' needs a GPU (GradScaler); use fp32 or bf16 on cpu")
    return precision


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every RNG the run uses; with ``deterministic`` also pick deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CPU and every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
