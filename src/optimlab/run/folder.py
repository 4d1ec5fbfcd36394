"""A run folder: the ONLY module that reads or writes ``metrics.csv``, ``summary.json``,
``checkpoint.pt``, ``best.pt`` and ``eval.json``, and the one that knows which config a run
trained with.

Every file is written atomically (temp file + rename), so a run killed at any moment
leaves either the previous version of a file or the new one, never half of one.
Reading is forgiving where a folder may be half-written (a report of a live sweep) and
strict where a wrong answer would cost a user their results (a checkpoint to resume).
A write the OS refuses (disk full, read-only) is a one-line :class:`StorageError` naming
the file. Which process may write a folder is :mod:`optimlab.run.lock`'s to say.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from optimlab.engine.metrics import METRIC_COLUMNS, EpochResult
from optimlab.errors import CheckpointError, StorageError
from optimlab.files import atomic_write_bytes
from optimlab.run.lock import LOCK_FILE, FolderLock  # noqa: F401 - LOCK_FILE: the folder's file names in one place

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"  # the best validation epoch's weights (and what a model needs to be used)
EVAL_FILE = "eval.json"  # optimlab-eval's results, one entry per split, weights and overrides
LOG_TABLE_FILE = "log.csv"  # logger=csv
PROFILE_TRACE_FILE = "profile_trace.json"  # debug=profile: torch.profiler's Chrome trace
HYDRA_DIR = ".hydra"
SWEEP_MARKERS = ("multirun.yaml", "optimization_results.yaml", "trials.csv", "optuna.db", "optuna.journal")
# any of these makes a folder a run folder (a live one may have only its .hydra/ yet)
MARKERS = (SUMMARY_FILE, METRICS_FILE, f"{HYDRA_DIR}/overrides.yaml")
CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "scheduler", "scaler", "history", "rng", "config")
BEST_KEYS = ("epoch", "metric", "direction", "value", "model", "inputs", "config")
WEIGHTS = ("best", "last")  # best.pt, or the model of checkpoint.pt (the last saved epoch)
UNREADABLE = object()  # read_summary's answer for a summary.json that is not JSON


@dataclass
class Checkpoint:
    """What ``checkpoint.pt`` holds, checked: the states, the history and the config."""

    path: Path
    payload: dict[str, Any]

    @property
    def epoch(self) -> int:
        return int(self.payload["epoch"])

    @property
    def history(self) -> list[EpochResult]:
        return [EpochResult(**row) for row in self.payload["history"]]

    @property
    def resolved_config(self) -> dict[str, Any]:
        return self.payload["config"]

    @property
    def best(self) -> dict[str, Any] | None:
        """The best epoch so far (epoch, metric, direction, value, model: its weights, or None
        when they are this checkpoint's own); None in a checkpoint saved before it was kept."""
        return self.payload.get("best")

    @property
    def inputs(self) -> dict[str, Any] | None:
        """What the model takes (channels, image_size, mean, std, classes); None when not saved."""
        return self.payload.get("inputs")

    def config(self) -> DictConfig:
        """The config the checkpoint was trained with, with its interpolations when saved."""
        return OmegaConf.create(self.payload.get("config_yaml") or self.payload["config"])

    def restore(self, state) -> None:
        """Load every saved state into freshly built objects (a TrainState), the RNGs last."""
        ckpt = self.payload
        try:
            state.model.load_state_dict(ckpt["model"])
            state.optimizer.load_state_dict(ckpt["optimizer"])
            state.scheduler.load_state_dict(ckpt["scheduler"])
            state.scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{self.path} does not fit the run's config ({type(e).__name__}: {e})") from e
        state.epoch = self.epoch
        state.history = self.history
        set_rng_states(ckpt["rng"])


def is_run_folder(path: Path) -> bool:
    return any((Path(path) / m).exists() for m in MARKERS)


def run_folders_under(root: Path) -> list[Path]:
    """Run folders at or under ``root``."""
    if is_run_folder(root):
        return [root]
    found: set[Path] = set()
    for marker in MARKERS:
        for hit in root.rglob(marker):
            found.add(hit.parent.parent if marker.startswith(HYDRA_DIR) else hit.parent)
    return sorted(found)


def is_sweep_folder(path: Path) -> bool:
    """A sweep's folder (``multirun/...``), not one of its trials' run folders."""
    path = Path(path)
    if not path.is_dir() or is_run_folder(path):
        return False
    if any((path / m).exists() for m in SWEEP_MARKERS):
        return True
    return any(child.is_dir() and is_run_folder(child) for child in path.iterdir())


class ModelFiles:
    """A run folder's files for using the trained model: ``best.pt`` (the best epoch's weights)
    and ``eval.json`` (optimlab-eval's results), next to :class:`RunFolder`'s training files
    (a part of RunFolder; its own class to keep each one short)."""

    path: Path

    # ------------------------------------------------------------------ best.pt, weights

    @property
    def has_best(self) -> bool:
        return (self.path / BEST_FILE).is_file()

    @property
    def best_path(self) -> Path:
        return self.path / BEST_FILE

    def save_best(self, epoch: int, metric: str, direction: str, value: float, model: dict[str, Any],
                  inputs: dict[str, Any] | None, config: DictConfig) -> Path:  # fmt: skip
        """``best.pt`` := the weights of the best validation epoch so far, atomically: the
        epoch, the metric and direction that chose it, its value, the model's state_dict,
        ``inputs`` (what the model takes: channels, image_size, normalisation mean/std,
        class names) and the resolved config (the model's class and arguments)."""
        import torch

        payload = {"epoch": epoch, "metric": metric, "direction": direction, "value": value, "model": model,
                   "inputs": inputs, "config": OmegaConf.to_container(config, resolve=True)}  # fmt: skip
        buf = io.BytesIO()
        torch.save(payload, buf)
        return self._write(BEST_FILE, buf.getvalue())

    def discard_best(self) -> None:
        """Remove best.pt (a resumed run whose checkpoint does not hold its best epoch's weights)."""
        (self.path / BEST_FILE).unlink(missing_ok=True)

    def load_best(self) -> dict[str, Any]:
        """best.pt's payload (on CPU); CheckpointError naming the file when missing or unreadable."""
        path = self.path / BEST_FILE
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist (removed, or the run was trained before best-epoch "
                                  f"weights were kept): weights=last uses {CHECKPOINT_FILE}'s")  # fmt: skip
        return _load_payload(path, BEST_KEYS, "optimlab's best weights", weights_only=True)

    def weights(self, which: str | None = None) -> dict[str, Any]:
        """The weights to use: ``which`` = ``best`` (best.pt), ``last`` (checkpoint.pt's model)
        or None (best.pt when there is one, else the last); a dict with ``weights``, ``epoch``,
        ``model`` (the state_dict), ``inputs`` (None when not recorded) and ``config`` (resolved).
        A folder with neither file is one CheckpointError line."""
        if which not in (None, *WEIGHTS):
            raise CheckpointError(f"weights={which!r} is not valid: must be one of {', '.join(WEIGHTS)}")
        if not self.path.is_dir():
            what = "is a file, not a run folder: give its folder" if self.path.exists() else "does not exist"
            raise CheckpointError(f"run folder {self.path} {what}")
        if which == "best" or (which is None and self.has_best):
            best = self.load_best()
            return {"weights": "best", "epoch": best["epoch"], "model": best["model"], "inputs": best["inputs"],
                    "config": best["config"]}  # fmt: skip
        if not self.has_checkpoint:
            raise CheckpointError(
                f"{self.path} holds no weights (neither {BEST_FILE} nor {CHECKPOINT_FILE}): the run stopped before "
                f"its first epoch, or it is not a run folder"
            )
        ckpt = self.load_checkpoint()
        return {"weights": "last", "epoch": ckpt.epoch, "model": ckpt.payload["model"], "inputs": ckpt.inputs,
                "config": ckpt.resolved_config}  # fmt: skip

    # ------------------------------------------------------------------ eval.json

    @property
    def eval_path(self) -> Path:
        return self.path / EVAL_FILE

    def read_evals(self) -> list[dict[str, Any]]:
        """eval.json's entries ([] when there is none or it cannot be read)."""
        try:
            found = json.loads((self.path / EVAL_FILE).read_text())
        except (OSError, ValueError):
            return []
        return found.get("evaluations", []) if isinstance(found, dict) else []

    def add_eval(self, entry: dict[str, Any], same: tuple[str, ...]) -> Path:
        """Add ``entry`` to eval.json (atomically), replacing an earlier entry that agrees on
        the keys ``same``; training's own files are never touched."""
        kept = [e for e in self.read_evals() if any(e.get(k) != entry.get(k) for k in same)]
        text = json.dumps({"evaluations": [*kept, entry]}, indent=2, default=str) + "\n"
        return self._write(EVAL_FILE, text.encode())


class RunFolder(ModelFiles):
    """One run's output folder (Hydra's ``runtime.output_dir``)."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ metrics.csv

    def write_metrics(self, history: Iterable[EpochResult]) -> None:
        """Rewritten whole each epoch, so it always matches the checkpoint."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for result in history:
            # repr-exact floats: two identical runs give byte-identical metrics.csv (timing aside)
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in result.as_row().items()})
        self._write(METRICS_FILE, buf.getvalue().encode())

    def read_metrics(self) -> list[dict[str, float]]:
        """Rows as floats; [] for a missing file; torn or odd rows are skipped."""
        try:
            with open(self.path / METRICS_FILE, newline="") as f:
                raw = list(csv.DictReader(f))
        except (OSError, csv.Error):
            return []
        rows = []
        for row in raw:
            try:
                rows.append({k: float(row[k]) for k in METRIC_COLUMNS if row.get(k) not in (None, "")})
            except ValueError:
                continue
        return [r for r in rows if "epoch" in r]

    # ------------------------------------------------------------------ log.csv, the profiler trace

    def read_log_table(self) -> list[dict[str, str]]:
        """logger=csv's rows as written ([] for a missing or unreadable file)."""
        try:
            with open(self.path / LOG_TABLE_FILE, newline="") as f:
                return list(csv.DictReader(f))
        except (OSError, csv.Error):
            return []

    def write_log_table(self, text: str) -> Path:
        """logger=csv's file := ``text`` (the whole table), atomically."""
        return self._write(LOG_TABLE_FILE, text.encode())

    @property
    def profile_trace_path(self) -> Path:
        """Where debug=profile's Chrome trace goes (torch.profiler writes it; open it in
        chrome://tracing or https://ui.perfetto.dev)."""
        return self.path / PROFILE_TRACE_FILE

    # ------------------------------------------------------------------ summary.json

    @property
    def summary_path(self) -> Path:
        """Where the summary is (for messages; read and write it through this class)."""
        return self.path / SUMMARY_FILE

    def write_summary(self, summary: dict[str, Any]) -> None:
        self._write(SUMMARY_FILE, (json.dumps(summary, indent=2, default=str) + "\n").encode())

    def end_summary(self, summary: dict[str, Any]) -> bool:
        """Write a run's last summary, whatever the disk says: the full one if it fits, else
        a minimal one (status, error); if even that cannot be written, remove the old file,
        which would otherwise say ``running`` for a process that is gone, and try once more.
        True when the full summary was written."""
        try:
            self.write_summary(summary)
            return True
        except StorageError:
            pass
        minimal = {k: summary.get(k) for k in ("status", "error", "run_dir", "epochs_completed", "finished_at")}
        try:
            self.write_summary(minimal)
            return False
        except StorageError:
            pass
        try:
            (self.path / SUMMARY_FILE).unlink(missing_ok=True)
            self.write_summary(minimal)  # the freed space may be enough now
        except (OSError, StorageError):
            pass
        return False

    def read_summary(self) -> dict[str, Any] | None | object:
        """The summary; None when there is none yet; :data:`UNREADABLE` when it is not JSON."""
        path = self.path / SUMMARY_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return UNREADABLE
        return data if isinstance(data, dict) else UNREADABLE

    def summary(self) -> dict[str, Any]:
        """The summary, or {} when there is none or it cannot be read (for reports)."""
        found = self.read_summary()
        return found if isinstance(found, dict) else {}

    def update_summary(self, **fields: Any) -> None:
        summary = self.summary()
        if summary:
            self.write_summary({**summary, **fields})

    # ------------------------------------------------------------------ checkpoint.pt

    @property
    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT_FILE).is_file()

    def save_checkpoint(self, state, config: DictConfig, seed: int, best: dict[str, Any] | None = None,
                        inputs: dict[str, Any] | None = None) -> Path:  # fmt: skip
        """The resumable state after ``state.epoch`` finished epochs (a TrainState); ``best``:
        the best epoch so far (its weights unless they are this epoch's), so a resumed run
        continues from the recorded best; ``inputs``: what the model takes (see :meth:`save_best`)."""
        payload = {
            "epoch": state.epoch,
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "scaler": state.scaler.state_dict(),
            "history": [r.as_row() for r in state.history],
            "rng": rng_states(),
            # batches are a pure function of (seed, epoch): see engine.data.epoch_generator
            "data_order": {"seed": seed, "next_epoch": state.epoch},
            "config": OmegaConf.to_container(config, resolve=True),
            "config_yaml": OmegaConf.to_yaml(config),  # with interpolations, for resume
            "best": best,
            "inputs": inputs,
        }
        return self.write_checkpoint(payload)

    def write_checkpoint(self, payload: dict[str, Any]) -> Path:
        """``checkpoint.pt`` := ``payload``, atomically (a kill mid-write keeps the old one)."""
        import torch

        buf = io.BytesIO()
        torch.save(payload, buf)
        return self._write(CHECKPOINT_FILE, buf.getvalue())

    def _write(self, name: str, data: bytes) -> Path:
        """``<folder>/<name>`` := ``data`` atomically; an OS refusal (disk full, read-only, no
        permission) becomes a StorageError naming the file."""
        path = self.path / name
        try:
            atomic_write_bytes(path, data)
        except OSError as e:
            raise StorageError.of(path, e, run_dir=self.path) from e
        return path

    def load_checkpoint(self) -> Checkpoint:
        """Read the checkpoint (on CPU) without writing anything here.

        Raises CheckpointError naming the file when it is missing, unreadable, or not a
        checkpoint that optimlab wrote (a missing key, history that disagrees with its epoch).
        """
        path = self.path / CHECKPOINT_FILE
        if not self.path.is_dir():
            raise CheckpointError(f"run folder {self.path} does not exist")
        if not path.is_file():
            raise CheckpointError(
                f"{path} does not exist: the run stopped before its first checkpoint "
                f"(checkpoint.every) or {self.path} is not a run folder; start the run again instead"
            )
        # The payload holds numpy/python RNG states, so it is a full pickle: only load
        # checkpoints you wrote yourself.
        payload = _load_payload(path, CHECKPOINT_KEYS, "an optimlab checkpoint", weights_only=False)
        if len(payload["history"]) != payload["epoch"]:
            raise CheckpointError(f"{path} is inconsistent: epoch {payload['epoch']} but {len(payload['history'])} rows of history")
        return Checkpoint(path, payload)

    # ------------------------------------------------------------------ configs

    def hydra_file(self, name: str) -> Path:
        """``.hydra/<name>`` (config.yaml, hydra.yaml, overrides.yaml): Hydra writes them."""
        return self.path / HYDRA_DIR / name

    def hydra_config(self) -> DictConfig | None:
        """The job config Hydra saved for the command that made this folder (None: none)."""
        path = self.hydra_file("config.yaml")
        return OmegaConf.load(path) if path.is_file() else None

    def overrides(self) -> list[str]:
        """The command-line overrides of the run (summary first, else Hydra's file)."""
        found = self.summary().get("overrides")
        if found is None:
            path = self.hydra_file("overrides.yaml")
            try:
                found = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else []
            except Exception:  # noqa: BLE001 - caught mid-write
                found = []
        return [str(o) for o in found or []]

    def trained_config(self) -> DictConfig:
        """The config this run trained with, interpolations kept.

        The checkpoint's copy when there is a checkpoint: ``.hydra/config.yaml`` is the last
        command's config, which for a resume (``resume=<folder>``, in a new folder or in
        place) is not the trained one. Hydra's ``.hydra/config.yaml`` for a run killed before
        its first checkpoint."""
        if self.has_checkpoint:
            return self.load_checkpoint().config()
        cfg = self.hydra_config()
        if cfg is None:
            raise CheckpointError(f"{self.path} holds neither {CHECKPOINT_FILE} nor {HYDRA_DIR}/config.yaml: it is not a run folder")
        return cfg

    # ------------------------------------------------------------------ what the folder holds

    def holds_results(self) -> bool:
        """Whether a run has left results here that a new run must not overwrite: a
        checkpoint, metrics, or a summary of a run that got past its checks (a folder with
        only ``.hydra/``, a log or an ``invalid_config`` summary holds nothing to lose)."""
        if self.has_checkpoint or (self.path / METRICS_FILE).exists():
            return True
        found = self.read_summary()
        return found is UNREADABLE or (isinstance(found, dict) and found.get("status") != "invalid_config")

    # ------------------------------------------------------------------ one owner

    def lock(self) -> FolderLock:
        """The folder's owner lock (see :class:`optimlab.run.lock.FolderLock`)."""
        return FolderLock(self.path)


# ---------------------------------------------------------------------- RNG states


def rng_states() -> dict[str, Any]:
    import numpy as np
    import torch

    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def discard_unstarted(folder: RunFolder, log_file: str, up_to: str | Path) -> bool:
    """Remove ``folder`` when it holds only what a command wrote before its checks
    refused it (Hydra's ``.hydra/`` and log, the lock, an ``invalid_config`` summary),
    and its parents that are left empty, below ``up_to`` (``outputs/<date>/``). Anything
    else in it, and the folder itself, stay. Whether it went."""
    import shutil

    ours = {HYDRA_DIR, log_file, LOCK_FILE, SUMMARY_FILE}
    try:
        if folder.holds_results() or any(p.name not in ours for p in folder.path.iterdir()):
            return False
        for name in ours:
            target = folder.path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        folder.path.rmdir()
    except OSError:  # read-only, or another process wrote meanwhile: keep what is there
        return False
    stop, parent = Path(up_to).resolve(), folder.path.resolve().parent
    while parent != stop and stop in parent.parents:
        try:
            parent.rmdir()  # only an empty folder goes
        except OSError:
            break
        parent = parent.parent
    return True


def _load_payload(path: Path, keys, what: str, *, weights_only: bool) -> dict:
    """A torch file of the run folder (on CPU) holding ``keys``; one CheckpointError line
    naming the file when it is unreadable or something else."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:
        raise CheckpointError(f"{path} is corrupt or unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or any(k not in payload for k in keys):
        found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not {what} (expected keys {list(keys)}, found {found})")
    return payload
