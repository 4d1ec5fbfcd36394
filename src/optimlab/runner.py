"""One training run, wired from config: validate → data, model, optimizer, scheduler → loop → run folder.

Data flows one way; the only way in from outside (a sweeper's pruning, progress bars)
is the ``callbacks`` argument of :func:`run`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import time
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from optimlab import data as datasets
from optimlab import resume as resuming
from optimlab.config import validate
from optimlab.errors import ConfigError, DeviceError, OptimlabError
from optimlab.plots import CurvesPlotter, curves_title
from optimlab.progress import ConsoleProgress
from optimlab.rundir import RunFolder, command_line, device_info, environment, now_iso
from optimlab.tboard import TensorBoardLogger
from optimlab.training import EpochResult, LoopConfig, TrainState, evaluate, fit

log = logging.getLogger(__name__)

# Keys of a scheduler config that are optimlab's, not the scheduler class's.
SCHEDULER_KEYS = ("interval", "monitor")


# --------------------------------------------------------------------------- building blocks


def available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(kind: str) -> torch.device:
    available = available_devices()
    if kind == "auto":
        chosen = next(d for d in ("cuda", "mps", "cpu") if d in available)
        log.info("device=auto chose %s (available: %s)", chosen, ", ".join(available))
        return torch.device(chosen)
    if kind not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device.type={kind!r} is not valid: choose one of auto, cpu, cuda, mps")
    if kind not in available:
        raise DeviceError(
            f"device={kind} was asked for but is not present on this machine; "
            f"available: {', '.join(available)} (device=auto picks the best of them)"
        )
    return torch.device(kind)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
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


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Instantiate the scheduler config; returns (scheduler, interval, monitor)."""
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in SCHEDULER_KEYS}
    if "steps_per_epoch" in kwargs and kwargs["steps_per_epoch"] is None:
        kwargs["steps_per_epoch"] = steps_per_epoch  # per-batch schedules size themselves to the data
    if kwargs.get("_target_", "").endswith("OneCycleLR"):
        total = kwargs["epochs"] * kwargs["steps_per_epoch"]
        if kwargs.get("pct_start", 0.3) * total < 2:  # torch divides by zero on shorter warm-ups
            raise ConfigError(
                f"scheduler=onecycle needs a warm-up of at least 2 steps, but pct_start="
                f"{kwargs.get('pct_start', 0.3)} of {total} steps (epochs x steps_per_epoch) is less: "
                f"train longer, use a smaller batch_size or a larger scheduler.pct_start"
            )
    scheduler = instantiate(kwargs)(optimizer)
    return scheduler, cfg.interval, cfg.get("monitor", "val_loss")


def rng_states() -> dict[str, Any]:
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def best_epoch(history: list[EpochResult], metric: str, direction: str) -> EpochResult | None:
    finite = [r for r in history if math.isfinite(getattr(r, metric))]
    if not finite:
        return None
    pick = max if direction == "maximize" else min
    return pick(finite, key=lambda r: getattr(r, metric))


# --------------------------------------------------------------------------- callbacks


class RunFolderWriter:
    """Writes metrics.csv and a resumable checkpoint.pt after epochs."""

    def __init__(self, folder: RunFolder, cfg: DictConfig, every: int):
        self.folder, self.cfg, self.every = folder, cfg, every

    def on_epoch_end(self, result: EpochResult, state: TrainState) -> None:
        self.folder.write_metrics([r.as_row() for r in state.history])
        last = state.epoch == self.cfg.epochs
        if last or (self.every > 0 and state.epoch % self.every == 0):
            self.save(state)

    def save(self, state: TrainState) -> None:
        self.folder.save_checkpoint(
            {
                "epoch": state.epoch,
                "model": state.model.state_dict(),
                "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict(),
                "scaler": state.scaler.state_dict(),
                "history": [r.as_row() for r in state.history],
                "rng": rng_states(),
                # batches are a pure function of (seed, epoch): see data.epoch_generator
                "data_order": {"seed": self.cfg.seed, "next_epoch": state.epoch},
                "config": OmegaConf.to_container(self.cfg, resolve=True),
                "config_yaml": OmegaConf.to_yaml(self.cfg),  # with interpolations, for resume
            }
        )


class InterruptGuard:
    """Ctrl-C during training: save the state of the last finished epoch, untorn.

    A checkpoint is only worth saving at an epoch boundary (resume continues from there,
    bit-exact); mid-epoch the weights have moved on, so the last saved checkpoint stays.
    ``on_epoch_end`` marks the boundary with the in-place version counters of every
    parameter and buffer: if they have not moved since, no training step ran after it.
    """

    def __init__(self, writer: RunFolderWriter, state: TrainState):
        self.writer = writer
        self.mark = (state.epoch, self._versions(state))

    @staticmethod
    def _versions(state: TrainState) -> int:
        tensors = [*state.model.parameters(), *state.model.buffers()]
        return sum(t._version for t in tensors)

    def on_epoch_end(self, result: EpochResult, state: TrainState) -> None:
        self.mark = (state.epoch, self._versions(state))

    def save(self, state: TrainState) -> int | None:
        """Save if ``state`` is still the last epoch boundary; the epoch saved, or None."""
        if self.mark != (state.epoch, self._versions(state)):
            return None
        self.writer.folder.write_metrics([r.as_row() for r in state.history])
        self.writer.save(state)
        return state.epoch


@contextlib.contextmanager
def sigint_ignored():
    """A second Ctrl-C must not cut the final writes short (they are atomic anyway)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals go elsewhere
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------- one run


def base_summary(cfg: DictConfig, folder: RunFolder, overrides: list[str]) -> dict[str, Any]:
    env = environment()
    return {
        "status": "running",
        "run_dir": str(folder.path),
        "command": command_line(),
        "overrides": overrides,
        "seed": cfg.seed,
        "started_at": now_iso(),
        "versions": env.pop("versions"),
        "git": env.pop("git"),
        "environment": env,
    }


def run(cfg: DictConfig, run_dir: str, overrides: list[str] | None = None, callbacks=()) -> float:
    """Train once as ``cfg`` says, write the run folder, return the objective value."""
    t_start = time.perf_counter()
    folder = RunFolder(run_dir)
    summary = base_summary(cfg, folder, overrides or [])
    try:
        resumed = resuming.prepare(cfg, overrides or []) if cfg.get("resume") else None  # reads only
        if resumed is not None:
            cfg = resumed.config  # the saved run's config (+ harmless overrides)
        validate(cfg)
        device = resolve_device(cfg.device.type)
        precision = resolve_precision(cfg.precision, device)
        if precision == "fp16" and device.type == "cpu":
            raise ConfigError("precision='fp16' needs a GPU (GradScaler); use fp32 or bf16 on cpu")
        summary.update(device=device_info(device), precision=precision)

        seed_everything(cfg.seed, cfg.deterministic)
        splits = datasets.load(cfg.data)  # validate() has checked batch_size against its size
        data = datasets.DeviceData(
            splits, cfg.data, device, channels_last=cfg.channels_last, placement=cfg.get("data_placement", "auto")
        )
        resuming.arm_kill_switch(data)  # OPTIMLAB_KILL_AT, for resume tests

        torch.manual_seed(cfg.seed)  # the same init whatever the data loading consumed
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = instantiate(cfg.model).to(device=device, memory_format=memory_format)
        optimizer = instantiate(cfg.optimizer)(model.parameters())
        scheduler, interval, monitor = build_scheduler(cfg.scheduler, optimizer, data.steps_per_epoch(cfg.batch_size))
        state = TrainState(model, optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=precision == "fp16"))
        loop = LoopConfig(
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            interval=interval,
            monitor=monitor,
            precision=precision,
            eval_batch_size=cfg.eval_batch_size,
            check_every=1 if device.type == "cpu" else 50,
            compile=bool(cfg.get("compile", False)),
        )
        if loop.compile:
            model.compile()  # in place: state_dict keys (checkpoints) stay those of the plain model
        if resumed is not None:
            resumed.restore(state)
            summary["resumed_from"] = resumed.info()
    except OptimlabError as e:
        folder.write_summary({**summary, "status": e.status, "error": str(e), "finished_at": now_iso()})
        raise

    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "model %s (%d parameters) | optimizer %s | scheduler %s | %s on %s (%s) | data %s: %d train, %d val, %d test",
        cfg.model._target_.rsplit(".", 1)[-1], n_params, cfg.optimizer._target_.rsplit(".", 1)[-1],
        cfg.scheduler._target_.rsplit(".", 1)[-1], precision, device, summary["device"].get("name"),
        cfg.data.name, len(splits.train), len(splits.val), len(splits.test),
    )  # fmt: skip
    summary.update(model=cfg.model._target_, n_parameters=n_params, status="running")
    folder.write_summary(summary)
    setup_s = time.perf_counter() - t_start

    writer = RunFolderWriter(folder, cfg, every=cfg.checkpoint.every)
    if resumed is not None:
        resumed.begin(folder, writer, state)
    watchers = observers(cfg, folder, overrides or [], state, n_train=len(splits.train))
    guard = InterruptGuard(writer, state)
    t_train = time.perf_counter()
    try:
        fit(state, data, loop, callbacks=[guard, writer, *watchers, *callbacks])
    except KeyboardInterrupt as e:
        with sigint_ignored():
            saved = guard.save(state)
            final = _finish(summary, cfg, state, "interrupted", setup_s, time.perf_counter() - t_train, t_start, error=e)
            final["error"] = f"interrupted (Ctrl-C) after {state.epoch} finished epochs"
            folder.write_summary(final)
            _end_observers(watchers, final)
        if saved is not None:
            log.info("saved the state after epoch %d to %s", saved, folder.path)
        raise
    except BaseException as e:
        status = e.status if isinstance(e, OptimlabError) else _status_of(e)
        final = _finish(summary, cfg, state, status, setup_s, time.perf_counter() - t_train, t_start, error=e)
        folder.write_summary(final)
        _end_observers(watchers, final)
        raise
    train_s = time.perf_counter() - t_train

    test_loss, test_acc = evaluate(state.model, data, "test", loop)
    log.info("test_loss %.4f  test_acc %.4f", test_loss, test_acc)
    summary["test"] = {"loss": test_loss, "acc": test_acc}
    final = _finish(summary, cfg, state, "completed", setup_s, train_s, t_start)
    folder.write_summary(final)
    _end_observers(watchers, final)
    return final["objective"]["value"]


def observers(cfg: DictConfig, folder: RunFolder, overrides: list[str], state: TrainState, n_train: int) -> list:
    """Callbacks that only watch: console progress, curves.png, TensorBoard events."""
    found: list = [ConsoleProgress(cfg.epochs, cfg.batch_size, n_train, quiet=cfg.get("quiet", False))]
    if cfg.get("plots", True):
        found.append(CurvesPlotter(folder.path, title=curves_title(cfg)))
    if cfg.get("tensorboard", False):
        found.append(TensorBoardLogger(folder.path, cfg, overrides, start_epoch=state.epoch))
    return found


def _end_observers(watchers: list, summary: dict[str, Any]) -> None:
    for watcher in watchers:
        try:
            watcher.on_run_end(summary)
        except Exception:  # a plot or an event file must not fail a finished run
            log.warning("%s could not finish", type(watcher).__name__, exc_info=True)


def _status_of(e: BaseException) -> str:
    # A sweeper's pruning signal is not a failure (optuna.TrialPruned, matched by name
    # so the loop does not import optuna).
    if type(e).__name__ == "TrialPruned":
        return "pruned"
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    return "failed"


def _finish(summary, cfg, state: TrainState, status, setup_s, train_s, t_start, error=None) -> dict[str, Any]:
    best = best_epoch(state.history, cfg.objective.metric, cfg.objective.direction)
    value = getattr(best, cfg.objective.metric) if best else float("nan")
    out = {
        **summary,
        "status": status,
        "epochs_completed": state.epoch,
        "objective": {
            "metric": cfg.objective.metric,
            "direction": cfg.objective.direction,
            "value": value,
            "best_epoch": best.epoch if best else None,
        },
        "best": best.as_row() if best else None,
        "final": state.history[-1].as_row() if state.history else None,
        "durations": {
            "setup_s": setup_s,
            "train_s": train_s,
            "total_s": time.perf_counter() - t_start,
        },
        "finished_at": now_iso(),
    }
    if error is not None:
        out["error"] = str(error) or type(error).__name__
        if hasattr(error, "epoch"):
            out["divergence"] = {
                "epoch": error.epoch,
                "step": error.step,
                "loss": error.loss,
                "last_finite_loss": error.last_finite_loss,
            }
    return out
