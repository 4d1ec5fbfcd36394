"""The life of a sweep's processes: the worker processes a sweep with ``n_workers > 1``
starts (one per worker index, each its own GPU where several exist), stop signals as
requests, and no orphaned workers.

SIGTERM (Slurm preemption, ``kill``) to a sweep is a request to stop: a worker stops its
running trial at once (the run saves its last finished epoch; the trial is marked to
resume) and claims no new one; a parent forwards it to its workers and waits for them.
A worker started by a parent also dies with it: on Linux the kernel sends it SIGTERM when
the parent goes away, even by SIGKILL (``prctl(PR_SET_PDEATHSIG)``); elsewhere a thread
polls the parent's pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from optimlab.config import overrides as ovr
from optimlab.errors import StorageUnreachable, SweepStopped
from optimlab.run.signals import raise_for
from optimlab.sweeping import outage

# The sweep's own lines (its workers, the ends of its trials, its summary) come from one
# logger, whichever module of the sweeper writes them.
SWEEP_LOGGER = "optimlab.sweeping.sweeper"
log = logging.getLogger(SWEEP_LOGGER)

PARENT_ENV = "OPTIMLAB_SWEEP_PARENT"  # set by a parent on the workers it starts: its pid
PR_SET_PDEATHSIG = 1
# overrides a sweep with n_workers > 1 sets on the worker processes it starts
WORKER_KEYS = (
    "hydra.sweep.dir", "hydra.sweeper.storage", "hydra.sweeper.study_name", "hydra.sweeper.n_workers",
    "hydra.sweeper.worker_index", "hydra.sweeper.session", "hydra.sweeper.sampler.seed",
)  # fmt: skip


SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stop:
    """Within the block, SIGTERM and Ctrl-C are remembered (``signum``), forwarded to
    ``children`` and raised (Preempted / KeyboardInterrupt) only inside :meth:`job`, while
    a trial runs: never half-way through claiming or telling a trial."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.children: list[subprocess.Popen] = []
        # while set, a stop raises KeyboardInterrupt: the one exception ray.get ends its wait on
        # (Ray swallows any other raised by a handler and waits on); the caller says which stop it was
        self.interrupts = False
        self._in_job = False
        self._previous: dict = {}

    def __enter__(self) -> Stop:
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def rearm(self) -> None:
        """Take SIGTERM and Ctrl-C back from a library that set its own handlers (``ray.init``
        replaces SIGTERM's)."""
        if self._previous:
            for s in SIGNALS:
                signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        self.signum = signum
        if first:  # a second signal (Ctrl-C reaches a worker from its terminal and its parent) only waits
            outage.stop_waiting()  # a worker waiting out a storage outage stops waiting
            self.forward()
            if self._in_job:
                if self.interrupts:
                    raise KeyboardInterrupt
                raise_for(signum)

    def forward(self) -> None:
        if self.signum is None:
            return
        for proc in self.children:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(self.signum)

    @contextlib.contextmanager
    def job(self) -> Iterator[None]:
        if self.signum is not None:
            raise_for(self.signum)
        self._in_job = True
        try:
            yield
        finally:
            self._in_job = False


# Workers of one sweep hash strings alike (unless the user chose a PYTHONHASHSEED): whatever
# a sampler or pruner derives from ``hash()`` agrees across them. Optuna's HyperbandPruner
# assigned a trial's bracket from hash(study name + trial number) before it used crc32
# (optuna issue #3083), so two workers could disagree on the bracket of one trial.
HASH_SEED = "0"


def child_env(env: dict[str, str]) -> dict[str, str]:
    """The environment of a worker this process starts."""
    return {"PYTHONHASHSEED": HASH_SEED, **env, PARENT_ENV: str(os.getpid())}


_STARTED_BY_PARENT = False  # set by die_with_parent in a worker process


def exit_if_worker(code: int) -> None:
    """In a worker process that was told to stop: leave at once, once its logs are flushed.

    Everything a worker owns is in the study's storage and its trials' folders by now;
    what is left is the interpreter's teardown (torch's and the other modules' finalizers),
    which takes seconds on a loaded machine, while a preempted job has little time."""
    if not _STARTED_BY_PARENT:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def die_with_parent(stop: Stop) -> None:
    """In a worker started by a parent: get SIGTERM when the parent goes away.

    The kernel's signal comes at once (Linux); a thread that polls the parent's pid
    covers other systems and a signal that arrived while ignored (a run's final writes):
    it sends SIGTERM again each second until ``stop`` has taken one.
    """
    raw = os.environ.pop(PARENT_ENV, None)  # not inherited by the trials' own processes
    if not raw:
        return
    global _STARTED_BY_PARENT
    _STARTED_BY_PARENT = True
    parent = int(raw)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    threading.Thread(target=_poll_parent, args=(parent, stop), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def _poll_parent(parent: int, stop: Stop, interval: float = 1.0) -> None:
    tick = threading.Event()
    while not tick.wait(interval):
        if os.getppid() != parent and stop.signum is None:
            os.kill(os.getpid(), signal.SIGTERM)


# --------------------------------------------------------------------------- many workers


def cores() -> int:
    """The CPU cores this process may run on (its affinity: a Slurm or container allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_count(device_type: str, n_trials: int, gpu_ids: list[str]) -> tuple[int, str]:
    """``n_workers: auto``: how many workers, and why (for the log line). On CUDA one per
    visible GPU; on CPU one per core, each with one core's threads (``start``), since small
    nets train more images per second as one-thread processes than as one process whose
    threads meet at OpenMP barriers after every small operator (bench/RESULTS.md)."""
    if device_type == "cuda":
        n, why = max(1, len(gpu_ids)), f"{max(1, len(gpu_ids))} GPU(s)"
    elif device_type == "cpu":
        n = cores()
        why = f"{n} CPU cores"
    else:
        n, why = 1, f"trials on {device_type}"
    n = max(1, min(n, n_trials))
    return n, why + (f"; at most n_trials={n_trials}" if n == n_trials and n_trials < cores() else "")


def auto(device_type: str | None, n_trials: int) -> int:
    """``n_workers: auto`` for trials on ``device_type`` (None: another app's, on a GPU if one
    is visible), said in one line."""
    gpu_ids = gpus(True)
    device = device_type or ("cuda" if gpu_ids else "cpu")
    n, why = auto_count(device, n_trials, gpu_ids)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, cores() // n))
    log.info("hydra.sweeper.n_workers=auto: %d worker(s) (%s)%s", n, why,
             f", {threads} CPU thread(s) each" if device == "cpu" else "")  # fmt: skip
    return n


def gpus(assign: bool) -> list[str]:
    """The GPUs to share out among the workers (``assign_gpus``): the visible ones."""
    if not assign:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def command(index: int, session: str, sweep_dir: Path, storage_url: str, study_name: str) -> list[str]:
    """This process's own command as worker ``index`` of ``session``, on the same study."""
    # the command's own overrides (Hydra's flags such as -m pass through), minus the worker's
    keep = [a for a in sys.argv[1:] if a.startswith("-") or ovr.key_of(a) not in WORKER_KEYS]
    extra = [
        f"hydra.sweep.dir={ovr.quote(sweep_dir)}",
        f"hydra.sweeper.storage={ovr.quote(storage_url)}",
        f"hydra.sweeper.study_name={ovr.quote(study_name)}",
        "hydra.sweeper.n_workers=1",
        f"hydra.sweeper.worker_index={index}",
        f"hydra.sweeper.session={ovr.quote(session)}",  # 8e771234 would parse as a float
    ]
    return [sys.executable, sys.argv[0], *keep, *extra]


def start(commands: list[list[str]], stop: Stop, gpus: list[str]) -> list[subprocess.Popen]:
    """One worker process per command (the i-th on GPU i, round robin, when several exist);
    ``stop`` forwards SIGTERM and Ctrl-C to each."""
    procs: list[subprocess.Popen] = []
    stop.children = procs  # SIGTERM to this process goes on to every worker
    for i, cmd in enumerate(commands):
        env = dict(os.environ)
        if len(gpus) > 1:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        # N workers on one machine share its cores: N processes each running torch's
        # default of one thread per core oversubscribe the CPU and all slow down.
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores() // len(commands))))
        procs.append(subprocess.Popen(cmd, env=child_env(env)))
        log.info("worker %d started (pid %d)%s", i, procs[-1].pid,
                 f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if len(gpus) > 1 else "")  # fmt: skip
    if stop.signum is not None:  # it came while the workers were starting
        stop.forward()
    return procs


def wait(procs: list[subprocess.Popen]) -> list[int]:
    """The workers' exit codes; Ctrl-C here goes on to the workers still running, and waits for them."""
    try:
        for p in procs:
            # in slices: a signal taken by another thread (Ray's, with hydra/launcher=ray) must not
            # leave the main thread blocked in waitpid, its handler never run
            while p.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=0.5)
        return [p.returncode for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise


def check_exit_codes(codes: list[int]) -> None:
    """Raise SweepStopped when a worker did not exit cleanly."""
    bad = [(i, c) for i, c in enumerate(codes) if c != 0]
    if bad and all(c == StorageUnreachable.exit_code for _, c in bad):  # the same exit code as theirs
        raise StorageUnreachable(
            "worker(s) " + ", ".join(str(i) for i, _ in bad) + " stopped: the storage was unreachable (their lines "
            "are above); run the same command again once it is reachable: their trials continue from their last checkpoint"
        )
    if bad:
        raise SweepStopped(
            "worker(s) " + ", ".join(_exit(i, c) for i, c in bad) + "; the study keeps every finished trial, and a "
            "killed worker's trial continues: run the same command to resume the study."
        )


def _exit(index: int, code: int) -> str:
    """How worker ``index`` ended: a signal by name (it printed nothing), else its exit code
    (it printed its own error line above)."""
    if code < 0:
        return f"{index} was killed by {signal.Signals(-code).name}"
    return f"{index} exited with code {code} (its error is above)"
