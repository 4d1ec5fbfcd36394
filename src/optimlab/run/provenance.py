"""Where a run came from: code version, library versions, machine, device, command line.
What ``summary.json`` records so a run can be trusted and repeated."""

from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def git_info(path: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout that holds optimlab's code (None outside git)."""
    where = str(path or Path(__file__).resolve().parent)

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", where, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def versions() -> dict[str, str]:
    """Versions of what a run depends on, read from package metadata: importing torchvision
    or optuna just to ask would add seconds to every run's start."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for dist, key in (
        ("torch", "torch"),
        ("torchvision", "torchvision"),
        ("hydra-core", "hydra"),
        ("omegaconf", "omegaconf"),
        ("numpy", "numpy"),
        ("optuna", "optuna"),
    ):
        module = sys.modules.get(key)  # already imported: its own build string (e.g. 2.15.0+cu132)
        try:
            found[key] = str(getattr(module, "__version__", None) or version(dist))
        except PackageNotFoundError:  # pragma: no cover - all are dependencies
            pass
    from optimlab import __version__

    found["optimlab"] = __version__
    return found


def device_info(device) -> dict[str, Any]:
    """What ran the numbers (a ``torch.device``)."""
    import torch

    info: dict[str, Any] = {"type": device.type}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["count"] = torch.cuda.device_count()
    elif device.type == "mps":
        info["name"] = "Apple MPS"
    else:
        info["name"] = _cpu_name()
        info["threads"] = torch.get_num_threads()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "versions": versions(),
        "git": git_info(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "ray": ray_task(),
    }


def ray_task() -> dict[str, Any] | None:
    """Where this process runs as a Ray task (``hydra/launcher=ray``): its node, worker pid and
    the resources Ray assigned it; None outside a Ray task (ray is never imported for it)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        ctx = ray.get_runtime_context()
        if ctx.worker.mode != ray.WORKER_MODE:
            return None
        return {"node_id": ctx.get_node_id(), "task_id": ctx.get_task_id(), "pid": os.getpid(),
                "assigned_resources": dict(ctx.get_assigned_resources())}  # fmt: skip
    except Exception:  # noqa: BLE001 - provenance must never fail a run
        return None


def command_line() -> str:
    """The command that started this process, as a shell would re-run it."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):
        argv = ["python", *argv]
    return shlex.join(argv)
