"""One training run, wired from a checked config: data, model, optimizer, scheduler →
the engine's loop → the run folder. The composition root: everything else is called from here.

Data flows one way; the only way in from outside (a sweeper's pruning, progress bars)
is the ``callbacks`` argument of :func:`run`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from optimlab import objective
from optimlab.config.checks import check_training_size, training_split_size
from optimlab.engine import data as datasets
from optimlab.engine.devices import resolve_device, resolve_precision, seed_everything
from optimlab.engine.metrics import VAL_LOSS
from optimlab.engine.training import EpochResult, LoopConfig, TrainState, evaluate, fit
from optimlab.errors import STORAGE_ERRNOS, OptimlabError, StorageError
from optimlab.observe.context import RunContext, TrialLink
from optimlab.observe.loggers import Guarded
from optimlab.observe.plots import CurvesPlotter
from optimlab.observe.profiler import StepProfiler
from optimlab.observe.progress import ConsoleProgress, weights_words
from optimlab.run import describe, signals
from optimlab.run.best import BestWeights
from optimlab.run.folder import RunFolder
from optimlab.run.provenance import command_line, device_info, environment, now_iso
from optimlab.run.resume import Resume

log = logging.getLogger(__name__)

# Keys of a scheduler config that are optimlab's, not the scheduler class's.
SCHEDULER_KEYS = ("interval", "monitor")


# --------------------------------------------------------------------------- building blocks


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """Instantiate the scheduler config; returns (scheduler, interval, monitor)."""
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in SCHEDULER_KEYS}
    if "steps_per_epoch" in kwargs and kwargs["steps_per_epoch"] is None:
        kwargs["steps_per_epoch"] = steps_per_epoch  # per-batch schedules size themselves to the data
    return instantiate(kwargs)(optimizer), cfg.interval, cfg.get("monitor", VAL_LOSS)


def load_data(cfg: DictConfig, device: torch.device) -> datasets.DeviceData:
    data = cfg.data
    splits = datasets.load_cached(OmegaConf.to_container(data, resolve=True))  # a sweep's worker loads it once
    if training_split_size(cfg) is None:  # the config could not tell: check the rules now
        check_training_size(cfg, len(splits.train))
    return datasets.DeviceData(
        splits, device,
        normalize=data.normalize, mean=data.get("mean"), std=data.get("std"),
        crop_padding=data.augment.crop_padding, flip=data.augment.flip, shuffle=data.shuffle,
        channels_last=cfg.channels_last, placement=cfg.data_placement,
    )  # fmt: skip


class FolderWriter:
    """Callback: best.pt when an epoch beats the best so far, metrics.csv after every epoch, a
    resumable checkpoint every ``every`` epochs and after the last; on a stop signal, the
    state of the last finished epoch, untorn.

    A checkpoint is only worth saving at an epoch boundary (resume continues from there,
    bit-exact); mid-epoch the weights have moved on, so the last saved checkpoint stays.
    ``on_epoch_end`` marks the boundary with the in-place version counters of every
    parameter and buffer: if they have not moved since, no training step ran after it.
    """

    def __init__(self, folder: RunFolder, cfg: DictConfig, state: TrainState, best: BestWeights):
        self.folder, self.cfg, self.best = folder, cfg, best
        self.mark = (state.epoch, self._versions(state))

    @staticmethod
    def _versions(state: TrainState) -> int:
        return sum(t._version for t in (*state.model.parameters(), *state.model.buffers()))

    def save(self, state: TrainState) -> None:
        self.folder.write_metrics(state.history)
        self.folder.save_checkpoint(state, self.cfg, seed=self.cfg.seed, best=self.best.record(state.epoch),
                                    inputs=self.best.inputs)  # fmt: skip

    def on_epoch_end(self, result: EpochResult, state: TrainState) -> None:
        self.best.update(result, state.model)  # before the checkpoint, which records the best so far
        self.mark = (state.epoch, self._versions(state))
        every = self.cfg.checkpoint.every
        if state.epoch == self.cfg.epochs or (every > 0 and state.epoch % every == 0):
            self.save(state)
        else:
            self.folder.write_metrics(state.history)

    def save_if_at_boundary(self, state: TrainState) -> int | None:
        """Save if ``state`` is still the last epoch boundary; the epoch saved, or None."""
        if self.mark != (state.epoch, self._versions(state)):
            return None
        self.save(state)
        return state.epoch


class Timed:
    """A callback whose ``on_epoch_end`` adds its seconds to ``totals[name]`` (the run's
    durations); every other attribute is the wrapped callback's."""

    def __init__(self, inner, name: str, totals: dict[str, float]):
        self.inner, self.name, self.totals = inner, name, totals
        totals.setdefault(name, 0.0)

    def on_epoch_end(self, result: EpochResult, state: TrainState) -> None:
        t0 = time.perf_counter()
        try:
            self.inner.on_epoch_end(result, state)
        finally:
            self.totals[self.name] += time.perf_counter() - t0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def observers(cfg: DictConfig, folder: RunFolder, overrides: list[str], state: TrainState, n_train: int,
              sweep: TrialLink | None = None) -> list:  # fmt: skip
    """Callbacks that only watch: console progress, curves.png, the profiler (debug=profile),
    the ``logger`` group's trackers."""
    found: list = [ConsoleProgress(cfg.epochs, cfg.batch_size, n_train, quiet=cfg.quiet)]
    if cfg.plots:
        found.append(CurvesPlotter(folder.path, title=describe.title(cfg)))
    profile = cfg.get("profile") or {}
    if profile.get("steps"):
        found.append(StepProfiler(folder.profile_trace_path, steps=profile.steps, warmup=profile.get("warmup", 1),
                                  memory=profile.get("memory", False), shapes=profile.get("shapes", False)))  # fmt: skip
    metrics, directions = objective.targets(cfg.objective)
    context = RunContext(folder=folder, hparams=describe.hparams(cfg, overrides), objectives=tuple(zip(metrics, directions)),
                         start_epoch=state.epoch, trial=sweep)  # fmt: skip
    for name, node in (cfg.get("logger") or {}).items():
        if name == "tensorboard" and not cfg.tensorboard:
            continue
        own = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
        found.append(Guarded(name, lambda node=node, own=own: get_method(node._target_)(context, **own)))
    return found


def _end_observers(watchers: list, summary: dict[str, Any]) -> None:
    for watcher in watchers:
        try:
            watcher.on_run_end(summary)
        except Exception:  # a plot or an event file must not fail a finished run
            log.warning("%s could not finish", type(watcher).__name__, exc_info=True)


def model_inputs(cfg: DictConfig, data: datasets.DeviceData) -> dict[str, Any]:
    """What the trained model takes, recorded with its weights (best.pt, checkpoint.pt) so a
    user can prepare images as training did: channels, image_size, the normalisation
    actually applied (mean/std; the training split's statistics when the config says null)
    and a name per label."""
    _, channels, size, _ = data.train.x.shape
    return {"channels": int(channels), "image_size": int(size), "num_classes": int(cfg.data.num_classes),
            "mean": data.mean, "std": data.std, "classes": datasets.class_names(data.classes, cfg.data.num_classes),
            "data": str(cfg.data.name)}  # fmt: skip


# what test_on= tests: the weights, in the order summary.json reports them
TEST_ON = {"best": ("best",), "last": ("last",), "both": ("best", "last")}


# --------------------------------------------------------------------------- summary.json


def _storage_error(e: BaseException, folder: RunFolder) -> BaseException:
    """An OS refusal to write (disk full, read-only) from anywhere in the run, as the one-line error."""
    if isinstance(e, OSError) and not isinstance(e, StorageError) and e.errno in STORAGE_ERRNOS:
        return StorageError.of(e.filename or folder.path, e, run_dir=folder.path)
    return e


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


def record_error(cfg: DictConfig, run_dir: str, overrides: list[str], error: OptimlabError) -> None:
    """summary.json for a run that failed before training: its status and the one-line reason."""
    folder = RunFolder(run_dir)
    folder.write_summary({**base_summary(cfg, folder, overrides), "status": error.status, "error": str(error),
                          "finished_at": now_iso()})  # fmt: skip


def final_summary(summary, cfg, state: TrainState, status, durations, error=None) -> dict[str, Any]:
    goal = objective.summarize(cfg.objective, state.history, summary.get("n_parameters"))
    best = next((r for r in state.history if r.epoch == goal["best_epoch"]), None)
    out = {
        **summary,
        "status": status,
        "epochs_completed": state.epoch,
        "objective": goal,
        "best": best.as_row() if best else None,
        "final": state.history[-1].as_row() if state.history else None,
        "durations": durations,
        "finished_at": now_iso(),
    }
    if error is not None:
        out["error"] = str(error) or type(error).__name__
        if hasattr(error, "last_finite_loss"):
            out["divergence"] = {
                "epoch": error.epoch, "step": error.step, "loss": error.loss, "last_finite_loss": error.last_finite_loss,
            }  # fmt: skip
    return out


# --------------------------------------------------------------------------- one run, in steps


@dataclass
class Prepared:
    """One run built and ready to train: its folder, state, loop settings and summary so far.

    :func:`run` is ``prepare`` then :meth:`run`: ``begin → fit → end`` (``end``: ``test →
    completed``, or ``failed``); a packed sweep (:mod:`optimlab.run.packed`) takes the same
    steps for each of its trials around one shared training call (``begin``, then
    ``fit_packed``, then ``end``), so each folder ends exactly as a run of its own would.
    """

    cfg: DictConfig
    folder: RunFolder
    overrides: list[str]
    summary: dict[str, Any]
    data: datasets.DeviceData
    state: TrainState
    loop: LoopConfig
    resume: Resume | None
    t_start: float
    setup_s: float
    writer: FolderWriter = None  # type: ignore[assignment]
    watchers: list = field(default_factory=list)
    t_train: float = 0.0
    t_trained: float | None = None
    t_tested: float | None = None
    parts: dict[str, float] = field(default_factory=dict)  # setup and callback seconds, by part
    sweep: TrialLink | None = None  # the study this run is a trial of (loggers group its trials)

    def durations(self) -> dict[str, float]:
        now = time.perf_counter()
        # within train_s: the training steps, the per-epoch validation, the callbacks (parts)
        steps = sum(len(self.data.train) / r.images_per_s for r in self.state.history if r.images_per_s > 0)
        epochs = sum(r.seconds for r in self.state.history)
        trained = self.t_trained or now
        return {"setup_s": self.setup_s, **self.parts, "train_s": trained - self.t_train, "steps_s": steps,
                "val_s": epochs - steps, "test_s": (self.t_tested or now) - trained, "total_s": now - self.t_start}

    def begin(self) -> None:
        """The first "running" summary.json (inside :func:`signals.stop_signals`), then the observers."""
        self.folder.write_summary(self.summary)
        if self.resume is not None:
            # a new folder is resumable itself even if killed before its next checkpoint
            self.writer.best.write()  # best.pt as the checkpoint records it
            self.writer.save(self.state)
            done = "nothing to train" if self.state.epoch >= self.cfg.epochs else "continuing"
            where = "in place" if self.resume.in_place else f"from {self.resume.source}"
            log.info("resume: %s %s at epoch %d/%d", done, where, self.state.epoch, self.cfg.epochs)
        t_watch = time.perf_counter()
        self.watchers = observers(self.cfg, self.folder, self.overrides, self.state, n_train=len(self.data.train),
                                  sweep=self.sweep)  # fmt: skip
        self.parts["observers_setup_s"] = time.perf_counter() - t_watch

    def callbacks(self, extra=()) -> list:
        """The folder writer and the observers, each timed into ``parts``, then ``extra``."""
        timed = [Timed(self.writer, "checkpoint_s", self.parts)]
        timed += [Timed(w, f"{getattr(w, 'name', type(w).__name__)}_s", self.parts) for w in self.watchers]
        return [*timed, *extra]

    def failed(self, e: BaseException) -> BaseException:
        """Record how the run ended on ``e`` (stop signal, divergence, pruning, error): the last
        boundary's checkpoint on a stop, the final summary.json; the exception to raise."""
        stopped = signals.status_of(e)
        error = _storage_error(e, self.folder)
        if isinstance(error, StorageError):
            logging.raiseExceptions = False  # train.log is on the same full disk: no handler tracebacks
        with signals.deferred():
            saved = None
            if stopped:
                try:
                    saved = self.writer.save_if_at_boundary(self.state)
                except StorageError:
                    pass  # the last checkpoint on disk stays as it was
            status = stopped or (error.status if isinstance(error, OptimlabError) else "failed")
            final = final_summary(self.summary, self.cfg, self.state, status, self.durations(), error=error)
            if stopped:
                final["error"] = f"{stopped} ({signals.SAID[stopped]}) after {self.state.epoch} finished epochs"
            self.folder.end_summary(final)
            _end_observers(self.watchers, final)
        if saved is not None:
            log.info("saved the state after epoch %d to %s", saved, self.folder.path)
        return error

    def test(self) -> dict[str, dict[str, Any]]:
        """Right after training: the clock stops, the test split is evaluated on the weights
        ``test_on`` names (best: the best epoch's, the default; last; both); per weights, a
        dict of loss, acc, weights and epoch. Best weights that are not known (no finite
        epoch) are replaced by the last, with a warning. The model ends with the last weights."""
        self.t_trained = time.perf_counter()
        model, best, epoch = self.state.model, self.writer.best, self.state.epoch
        wanted = TEST_ON[self.cfg.get("test_on") or "best"]
        if "best" in wanted and best.model is None:
            log.warning("test_on=%s: no best epoch's weights are known (no finite %s): testing the last epoch's",
                        self.cfg.get("test_on"), best.metric)  # fmt: skip
            wanted = ("last",)
        tested: dict[str, dict[str, Any]] = {}
        if "last" in wanted or best.epoch == epoch:
            loss, acc = evaluate(model, self.data, "test", self.loop)
            tested["last"] = {"loss": loss, "acc": acc, "weights": "last", "epoch": epoch}
        if "best" in wanted:
            if best.epoch == epoch:  # the last epoch is the best: the same weights, the same figures
                tested["best"] = {**tested["last"], "weights": "best"}
            else:
                last = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.load_state_dict(best.model)
                try:
                    loss, acc = evaluate(model, self.data, "test", self.loop)
                finally:
                    model.load_state_dict(last)
                tested["best"] = {"loss": loss, "acc": acc, "weights": "best", "epoch": best.epoch}
            if "last" not in wanted:
                tested.pop("last", None)
        self.t_tested = time.perf_counter()
        return tested

    def completed(self, tested: dict[str, dict[str, Any]]) -> float | tuple[float, ...]:
        """The final summary of a run that trained all its epochs; its objective."""
        with signals.deferred():  # the run is done: its last writes are not cut short
            primary = tested.get("best") or tested["last"]
            for result in (primary, *(r for r in tested.values() if r is not primary)):
                log.info("test_loss %.4f  test_acc %.4f (%s)", result["loss"], result["acc"], weights_words(result))
            self.summary.update(test=primary, test_weights=primary["weights"], best_weights=self.writer.best.summary())
            if len(tested) > 1:
                self.summary["test_last"] = tested["last"]
            final = final_summary(self.summary, self.cfg, self.state, "completed", self.durations())
            written = self.folder.end_summary(final)
            _end_observers(self.watchers, final)
        if not written:
            raise StorageError(f"cannot write {self.folder.summary_path}: the run completed but its summary "
                               f"could not be saved (disk full?); metrics.csv and checkpoint.pt hold its results")
        return objective.returned(final["objective"])

    def end(self, error: BaseException | None = None) -> float | tuple[float, ...]:
        """After training, which ended on ``error`` if given: the test split and the final
        summary.json; the objective, or raises what the run ended with (see :meth:`failed`)."""
        if error is None:
            try:
                test = self.test()
            except BaseException as e:  # noqa: BLE001 - recorded, then raised
                error = e
        if error is not None:
            recorded = self.failed(error)
            if recorded is not error:
                raise recorded from error
            raise error
        return self.completed(test)

    def run(self, callbacks=()) -> float | tuple[float, ...]:
        """Train this run alone: ``begin → fit → end``; ``callbacks`` after the run's own."""
        # From the first "running" to the last word, SIGTERM unwinds through end():
        # summary.json never says "running" for a process that is gone.
        with signals.stop_signals():
            try:
                self.begin()
                fit(self.state, self.data, self.loop, callbacks=self.callbacks(callbacks))
            except BaseException as e:  # noqa: BLE001 - recorded, then raised
                return self.end(e)
            return self.end()


def prepare(
    cfg: DictConfig, run_dir: str, overrides: list[str] | None = None, resume: Resume | None = None,
    data: datasets.DeviceData | None = None, sweep: TrialLink | None = None,
) -> Prepared:  # fmt: skip
    """Build everything a run of the (checked) ``cfg`` trains: device, data (``data`` when given:
    loaded once for several runs), model, optimizer, scheduler, the resumed state. Writes
    nothing unless it fails: then summary.json holds the one-line reason."""
    t_start = time.perf_counter()
    overrides = list(overrides or [])
    folder = RunFolder(run_dir)
    summary = base_summary(cfg, folder, overrides)
    try:
        device = resolve_device(cfg.device.type)
        precision = resolve_precision(cfg.precision, device)
        summary.update(device=device_info(device), precision=precision)
        seed_everything(cfg.seed, cfg.deterministic)
        t_data = time.perf_counter()
        if data is None:
            data = load_data(cfg, device)
        t_build = time.perf_counter()

        torch.manual_seed(cfg.seed)  # the same init whatever the data loading consumed
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = instantiate(cfg.model).to(device=device, memory_format=memory_format)
        optimizer = instantiate(cfg.optimizer)(model.parameters())
        scheduler, interval, monitor = build_scheduler(cfg.scheduler, optimizer, data.steps_per_epoch(cfg.batch_size))
        state = TrainState(model, optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=precision == "fp16"))
        loop = LoopConfig(
            epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, interval=interval, monitor=monitor,
            precision=precision, eval_batch_size=cfg.eval_batch_size,
            check_every=1 if device.type == "cpu" else 50, compile=cfg.compile,
        )  # fmt: skip
        if loop.compile:
            model.compile()  # in place: state_dict keys (checkpoints) stay those of the plain model
        if resume is not None:
            resume.checkpoint.restore(state)
            summary["resumed_from"] = resume.info()
        parts = {"data_s": t_build - t_data, "build_s": time.perf_counter() - t_build}
    except OptimlabError as e:
        record_error(cfg, run_dir, overrides, e)
        raise

    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "model %s (%d parameters) | optimizer %s | scheduler %s | %s on %s (%s) | data %s: %d train, %d val, %d test",
        describe.short_name(cfg.model), n_params, describe.short_name(cfg.optimizer),
        describe.short_name(cfg.scheduler), precision, device, summary["device"].get("name"),
        cfg.data.name, len(data.train), len(data.val), len(data.test),
    )  # fmt: skip
    summary.update(model=cfg.model._target_, n_parameters=n_params, status="running")
    if resume is not None and resume.in_place:  # a requeue: the folder's history goes on
        previous = folder.summary()
        summary["resumed_from"] = previous.get("resumed_from") or resume.info()
        summary["requeued"] = [*previous.get("requeued", []), {"epoch": resume.epoch, "at": now_iso()}]
    prepared = Prepared(cfg, folder, overrides, summary, data, state, loop, resume, t_start,
                        setup_s=time.perf_counter() - t_start, sweep=sweep, parts=parts)  # fmt: skip
    best = BestWeights.of(folder, cfg, model_inputs(cfg, data), resume.checkpoint if resume else None)
    prepared.writer = FolderWriter(folder, cfg, state, best)
    prepared.t_train = time.perf_counter()
    return prepared


def run(
    cfg: DictConfig, run_dir: str, overrides: list[str] | None = None, callbacks=(), resume: Resume | None = None,
    sweep: TrialLink | None = None,
) -> float | tuple[float, ...]:
    """Train once as the (checked) ``cfg`` says, write the run folder, return the objective value
    (a tuple of values with several ``objective.metrics``).

    ``resume``: a checked plan (:func:`optimlab.run.resume.prepare`) whose checkpoint the
    run continues from; ``cfg`` is then its effective config. ``sweep``: the study this run
    is a trial of (loggers group a sweep's trials by it).
    """
    return prepare(cfg, run_dir, overrides, resume, sweep=sweep).run(callbacks)
