"""Several runs trained at once in this process (a packed sweep): each prepared, begun and
ended by the runner's own steps (:class:`optimlab.run.runner.Prepared`), around one shared
training call; a run that cannot join a pack runs alone as :meth:`Prepared.run` runs it.

The data is loaded once (the runs of a pack share it); each run has its own folder,
summary.json, metrics.csv and checkpoint (its own :class:`FolderWriter`), its own
observers and its own callbacks (a sweep trial's pruning). A run that is pruned or
diverges leaves the pack and ends as it would alone; a stop signal ends every run still
in the pack the way it ends a lone run (the last finished epoch saved, resumable).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from optimlab.engine.packed import PACK_MEMORY_SHARE, check_packable, fit_packed, free_bytes, pack_limit, trial_bytes
from optimlab.errors import OptimlabError
from optimlab.observe.context import TrialLink
from optimlab.run import signals
from optimlab.run.runner import Prepared, prepare

log = logging.getLogger(__name__)

Outcome = Any  # the objective value(s) of a finished run, or the exception it ended with


def run_packed(
    cfgs: Sequence[DictConfig],
    run_dirs: Sequence[str],
    overrides_list: Sequence[list[str]],
    callbacks_list: Sequence[Sequence[Any]],
    sweeps: Sequence[TrialLink | None] | None = None,
    free: int | None = None,
) -> list[Outcome]:
    """Train the (checked) ``cfgs`` together, one folder each; per run, its objective value(s)
    or the exception it ended with (pruned, diverged, failed). A stop signal (Ctrl-C,
    SIGTERM) is raised after every run in the pack has recorded it.

    Runs that cannot share one pack (the engine says what differs) train one after another;
    more runs than fit in the device's memory at once (``free`` bytes; None: ask the device)
    train in several packs, one after another.
    """
    outcomes: list[Outcome] = [None] * len(cfgs)
    ready: list[tuple[int, Prepared]] = []
    data = None
    for i, (cfg, run_dir, overrides) in enumerate(zip(cfgs, run_dirs, overrides_list)):
        try:
            one = prepare(cfg, run_dir, overrides, data=data, sweep=sweeps[i] if sweeps else None)
        except OptimlabError as e:  # its summary.json says why; the others go on
            outcomes[i] = e
            continue
        data = one.data
        ready.append((i, one))
    if not ready:
        return outcomes
    try:
        check_packable([one.state for _, one in ready], [one.loop for _, one in ready])
    except ValueError as e:
        log.warning("these %d runs cannot train as one pack (%s): they train one after another", len(ready), e)
        for i, one in ready:
            outcomes[i] = _alone(one, callbacks_list[i])
        return outcomes
    size = _fitting(ready, data, free)
    for start in range(0, len(ready), size):
        chunk = ready[start : start + size]
        if len(chunk) == 1:
            (i, one), = chunk
            outcomes[i] = _alone(one, callbacks_list[i])
        else:
            _train_pack(chunk, data, callbacks_list, outcomes)
    return outcomes


def _fitting(ready: list[tuple[int, Prepared]], data, free: int | None) -> int:
    """The most runs of ``ready`` that train at once in the device's free memory (one line
    saying so when that is fewer than were asked for)."""
    one = ready[0][1]
    per_trial = trial_bytes(one.state, tuple(data.train.x.shape[1:]), one.loop.batch_size, one.loop.precision)
    free = free_bytes(data.device) if free is None else free
    size = pack_limit(per_trial, free)
    if size < len(ready):
        mib = 2**20
        log.warning(
            "hydra.sweeper.pack: %d trials do not fit at once on %s (about %d MiB each, %d MiB free, %d%% of it "
            "usable): they train in packs of at most %d", len(ready), data.device, per_trial // mib, free // mib,
            round(100 * PACK_MEMORY_SHARE), size,
        )  # fmt: skip
    return size


def _train_pack(chunk: list[tuple[int, Prepared]], data, callbacks_list, outcomes: list[Outcome]) -> None:
    """One pack of prepared runs trained together: each ``begin``, one ``fit_packed``, each
    ``end``; each run's outcome in its slot of ``outcomes``."""
    log.info("training %d runs as one pack: %s", len(chunk), ", ".join(str(one.folder.path.name) for _, one in chunk))
    with signals.stop_signals():
        begun: list[tuple[int, Prepared]] = []
        try:
            for i, one in chunk:
                try:
                    one.begin()
                except Exception as e:  # noqa: BLE001 - this run cannot start; the pack goes on
                    outcomes[i] = _ended(one, e)
                    continue
                begun.append((i, one))
            t_train = time.perf_counter()
            for _, one in begun:
                one.t_train = t_train
            ended = fit_packed(
                [one.state for _, one in begun], data, [one.loop for _, one in begun],
                [one.callbacks(callbacks_list[i]) for i, one in begun],
            )  # fmt: skip
        except BaseException as e:  # a stop signal or a failure of the pack itself: every run records it
            for i, one in begun:
                outcomes[i] = one.failed(e)
            raise
        for (i, one), error in zip(begun, ended):
            outcomes[i] = _ended(one, error)


def _ended(one: Prepared, error: BaseException | None = None) -> Outcome:
    """:meth:`Prepared.end` of one run of the pack: its objective, or the exception it ended with."""
    try:
        return one.end(error)
    except Exception as e:  # noqa: BLE001 - this run's end; stop signals propagate
        return e


def _alone(one: Prepared, callbacks: Sequence[Any]) -> Outcome:
    """A prepared run trained on its own (a run that cannot join a pack), as :meth:`Prepared.run` trains it."""
    try:
        return one.run(callbacks)
    except Exception as e:  # noqa: BLE001 - this run's end; stop signals propagate
        return e
