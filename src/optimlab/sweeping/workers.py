"""The life of a sweep's processes: stop signals as requests, and no orphaned workers.

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

from optimlab.run.signals import raise_for

log = logging.getLogger(__name__)

PARENT_ENV = "OPTIMLAB_SWEEP_PARENT"  # set by a parent on the workers it starts: its pid
PR_SET_PDEATHSIG = 1


SIGNALS = (signal.SIGTERM, signal.SIGINT)




class Stop:
    """Within the block, SIGTERM and Ctrl-C are remembered (``signum``), forwarded to
    ``children`` and raised (Preempted / KeyboardInterrupt) only inside :meth:`job`, while
    a trial runs: never half-way through claiming or telling a trial."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.children: list[subprocess.Popen] = []
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

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        self.signum = signum
        if first:  # a second signal (Ctrl-C reaches a worker from its terminal and its parent) only waits
            self.forward()
            if self._in_job:
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


def die_with_parent(stop: Stop) -> None:
    """In a worker started by a parent: get SIGTERM when the parent goes away.

    The kernel's signal comes at once (Linux); a thread that polls the parent's pid
    covers other systems and a signal that arrived while ignored (a run's final writes):
    it sends SIGTERM again each second until ``stop`` has taken one.
    """
    raw = os.environ.pop(PARENT_ENV, None)  # not inherited by the trials' own processes
    if not raw:
        return
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
