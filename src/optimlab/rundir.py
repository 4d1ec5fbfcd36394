"""What goes into a run folder: metrics.csv, summary.json, checkpoint.pt, environment.

Every file is written atomically (temp file + rename), so a run killed at any moment
leaves either the previous version of a file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "val_acc", "seconds", "images_per_s"]
TIMING_COLUMNS = ["seconds", "images_per_s"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


class RunFolder:
    """One run's output folder (Hydra's ``runtime.output_dir``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    # metrics.csv: rewritten whole each epoch, so it always matches the checkpoint
    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row[k]) for k in METRICS_COLUMNS})
        atomic_write_text(self.path / METRICS_FILE, buf.getvalue())

    def read_metrics(self) -> list[dict[str, str]]:
        path = self.path / METRICS_FILE
        if not path.exists():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.path / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")

    def read_summary(self) -> dict[str, Any] | None:
        path = self.path / SUMMARY_FILE
        return json.loads(path.read_text()) if path.exists() else None

    def save_checkpoint(self, payload: dict[str, Any]) -> Path:
        buf = io.BytesIO()
        torch.save(payload, buf)
        path = self.path / CHECKPOINT_FILE
        atomic_write_bytes(path, buf.getvalue())
        return path


CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "scheduler", "scaler", "history", "rng", "config")


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """Read a run folder's checkpoint.pt (on CPU) without writing anything there.

    Raises CheckpointError naming the file when it is missing, unreadable, or not a
    checkpoint that optimlab wrote (a missing key, history that disagrees with its epoch).
    """
    from optimlab.errors import CheckpointError

    path = Path(run_dir) / CHECKPOINT_FILE
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    if not path.is_file():
        raise CheckpointError(
            f"{path} does not exist: the run stopped before its first checkpoint "
            f"(checkpoint.every) or {run_dir} is not a run folder; start the run again instead"
        )
    try:
        # The payload holds numpy/python RNG states, so it is a full pickle: only load
        # checkpoints you wrote yourself.
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path} is corrupt or unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or any(k not in payload for k in CHECKPOINT_KEYS):
        found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not an optimlab checkpoint (expected keys {list(CHECKPOINT_KEYS)}, found {found})")
    if len(payload["history"]) != payload["epoch"]:
        raise CheckpointError(
            f"{path} is inconsistent: epoch {payload['epoch']} but {len(payload['history'])} rows of history"
        )
    return payload


def _fmt(value: Any) -> Any:
    # repr-exact floats: two identical runs give byte-identical metrics.csv (timing aside)
    return repr(value) if isinstance(value, float) else value


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

    found = {"python": platform.python_version(), "torch": torch.__version__}
    for dist, key in (
        ("torchvision", "torchvision"),
        ("hydra-core", "hydra"),
        ("omegaconf", "omegaconf"),
        ("numpy", "numpy"),
        ("optuna", "optuna"),
    ):
        try:
            found[key] = version(dist)
        except PackageNotFoundError:  # pragma: no cover - all are dependencies
            pass
    from optimlab import __version__

    found["optimlab"] = __version__
    return found


def device_info(device: torch.device) -> dict[str, Any]:
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
    }


def command_line() -> str:
    """The command that started this process, as a shell would re-run it."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(".py"):
        argv = ["python", *argv]
    return shlex.join(argv)
