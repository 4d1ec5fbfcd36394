"""SIGTERM and Ctrl-C during training: stop at once, keep the last finished epoch.

SIGTERM is what Slurm, Kubernetes and ``kill`` send before they take a job away. While
training runs, it raises :class:`Preempted` in the main thread (like Ctrl-C raises
KeyboardInterrupt), so both unwind through the same path: the runner saves the state
of the last finished epoch, writes ``summary.json`` and the process exits (143 / 130).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from optimlab.errors import Preempted

# THE words of a stop: a run's status -> its signal, the exit code, and how users say it
SIGNALS = {"interrupted": signal.SIGINT, "preempted": signal.SIGTERM}
EXIT_CODES = {"interrupted": 130, "preempted": 128 + signal.SIGTERM}
SAID = {"interrupted": "Ctrl-C", "preempted": "SIGTERM"}


def status_of_signal(signum: int) -> str:
    return "interrupted" if signum == signal.SIGINT else "preempted"


def error_for(signum: int) -> BaseException:
    """What a stop signal means in the main thread: KeyboardInterrupt or Preempted."""
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return Preempted(f"signal {signal.Signals(signum).name}")


def raise_for(signum: int) -> None:
    raise error_for(signum)


def status_of(e: BaseException) -> str | None:
    """``interrupted`` / ``preempted`` for the two stop signals, else None."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    if isinstance(e, Preempted):
        return "preempted"
    return None


def _raise_preempted(signum, frame) -> None:
    raise_for(signum)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Preempted` (main thread only)."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_preempted)
    except ValueError:  # not the main thread: signals go elsewhere
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A second Ctrl-C or SIGTERM must not cut the final writes short (they are atomic anyway)."""
    try:
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
