"""Storage outages are waited out: THE retry rule for every call a sweep makes to its study's
storage (the worker's claims, tells and reads, a trial's per-epoch reports, the study lock).

A call that fails with a *transient* error — the database server is down, restarting or
dropped the connection (SQLAlchemy's ``OperationalError`` / ``InterfaceError``, also inside
Optuna's ``StorageInternalError``), SQLite's "database is locked" or a disk I/O error, an
I/O error on a journal file — is tried again with exponential backoff (0.5 s, doubling,
at most 10 s apart) until it succeeds or the outage has lasted ``storage_patience``
seconds; then :class:`~optimlab.errors.StorageUnreachable` stops the sweep with one line.
Any other error (bad data, a finished trial) is raised at once, as before.

Each process keeps one :class:`Outage` per storage, shared by its threads and by the
trial it runs: one log line when an outage begins and one when it ends, whichever call
saw it. Patience counts from the first failed call; once it is spent, every call tries
once and fails at once (a stopping worker's last writes do not wait again).

A retried write whose earlier attempt was committed after all is not applied twice: a
trial's end (``set_trial_state_values``) is checked against the stored trial first.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from optuna.storages import BaseStorage, _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

from optimlab.errors import StorageUnreachable

log = logging.getLogger("optimlab.sweeping.sweeper")  # the sweep's own lines (workers.SWEEP_LOGGER)

FIRST_DELAY, MAX_DELAY = 0.5, 10.0  # seconds between tries: 0.5, 1, 2, 4, 8, 10, 10, …
DEFAULT_PATIENCE = 300.0
# OSErrors a file storage (journal, SQLite) may recover from; a full disk is not one of them
TRANSIENT_ERRNOS = {errno.EIO, errno.ESTALE, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ENOLCK,
                    errno.ECONNREFUSED, errno.ECONNRESET, errno.EINTR}  # fmt: skip
# SQLite's OperationalErrors that pass (another writer holds the file, a flaky disk); "no such
# table", "readonly database" or "disk is full" do not
SQLITE_TRANSIENT = ("database is locked", "database table is locked", "database is busy", "disk i/o error",
                    "unable to open database file")  # fmt: skip

T = TypeVar("T")


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_transient(error: BaseException) -> bool:
    """True for an error of an unreachable or busy storage, which passes by itself."""
    import sqlite3

    from sqlalchemy import exc

    for e in _chain(error):
        if isinstance(e, StorageUnreachable):
            return False
        if isinstance(e, exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError, exc.TimeoutError)):
            orig = getattr(e, "orig", None)
            if isinstance(orig, sqlite3.Error):
                return any(s in str(orig).lower() for s in SQLITE_TRANSIENT)
            return True
        if isinstance(e, OSError) and e.errno in TRANSIENT_ERRNOS:
            return True
    return False


def first_line(error: BaseException) -> str:
    """The first line of the database driver's (or the OS's) own words ("Connection refused",
    "server closed the connection unexpectedly", "database is locked"), else of the error."""
    from sqlalchemy import exc

    chain = list(_chain(error))
    said = [e.orig for e in chain if isinstance(e, exc.DBAPIError) and e.orig is not None]
    said += [e for e in chain if isinstance(e, OSError)] + chain[::-1]
    for e in said:
        lines = [line.strip() for line in str(e).splitlines() if line.strip() not in ("", "()")]
        if lines:
            return lines[0]
    return type(error).__name__


class Outage:
    """One storage's outages as this process sees them, and the patience to wait them out."""

    def __init__(self, shown: str, patience: float, hide: str | None = None) -> None:
        self.shown, self.patience, self.hide = shown, patience, hide
        self.who = ""  # "worker 1: " in a sweep of several workers
        self.since: float | None = None  # when the outage now going on began (monotonic)
        self.ended: float | None = None  # when the last one ended
        self.last_error = ""
        self._lock = threading.Lock()
        self._back = threading.Event()  # set when a call goes through: the others stop waiting

    def __getstate__(self) -> dict[str, Any]:  # a trial handed to another process (Lightning's ddp_spawn)
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_back")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock, self._back = threading.Lock(), threading.Event()

    def _said(self, error: BaseException) -> str:
        text = first_line(error)
        return text.replace(self.hide, "***") if self.hide else text

    def failed(self, error: BaseException) -> float:
        """Note a transient failure; the seconds the outage has lasted (its first line logged once)."""
        with self._lock:
            now = time.monotonic()
            self.last_error = self._said(error)
            if self.since is None:
                self.since = now
                self._back.clear()
                waits = f"; waiting up to {self.patience:g} s for it (hydra.sweeper.storage_patience)"
                log.warning("%sstorage %s is unreachable (%s)%s", self.who, self.shown, self.last_error,
                            waits if self.patience else "")  # fmt: skip
            return now - self.since

    def succeeded(self) -> None:
        """Note a call that went through; the end of an outage is logged once."""
        if self.since is None:  # the common case: no lock taken
            return
        with self._lock:
            if self.since is not None:
                now = time.monotonic()
                log.info("%sstorage %s is reachable again after %.1f s", self.who, self.shown, now - self.since)
                self.since, self.ended = None, now
                self._back.set()

    @property
    def given_up(self) -> bool:
        """The outage now going on has outlasted the patience (or a stop signal came): calls fail at once."""
        since = self.since
        return since is not None and (time.monotonic() - since >= self.patience or _stopping.is_set())

    def quiet_since(self, seconds: float) -> bool:
        """No outage now, and none ended in the last ``seconds`` (other workers' heartbeats had
        time to beat again: a stale-trial check would not fail trials that only missed beats)."""
        return self.since is None and (self.ended is None or time.monotonic() - self.ended >= seconds)

    def unreachable(self, lasted: float) -> StorageUnreachable:
        return StorageUnreachable(
            f"stopping the sweep: the storage {self.shown} has been unreachable for {int(lasted)} s, longer than "
            f"hydra.sweeper.storage_patience={self.patience:g} (last error: {self.last_error}); nothing is lost: "
            f"run the same command again once it is reachable"
        )

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, tried again on transient errors for as long as the patience lasts."""
        delay = FIRST_DELAY
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as e:
                if not is_transient(e):
                    raise
                lasted = self.failed(e)
                if lasted >= self.patience or _stopping.is_set():
                    raise self.unreachable(lasted) from None
                if getattr(_local, "no_wait", False):
                    raise
                self._back.wait(min(delay, self.patience - lasted))
                delay = min(2 * delay, MAX_DELAY)
                continue
            self.succeeded()
            return result


_local = threading.local()
_stopping = threading.Event()  # a stop signal came: no call waits any more


def stop_waiting() -> None:
    """A stop signal came (SIGTERM, Ctrl-C): every call waiting for a storage gives up now,
    and later ones do not wait (the worker stops; its trials continue next time)."""
    _stopping.set()
    with _outages_lock:
        for found in _outages.values():
            found._back.set()


@contextlib.contextmanager
def without_waiting(on: bool = True) -> Iterator[None]:
    """Within the block (``on``), this thread's storage calls are tried once: a transient
    error is noted (the outage begins) and raised as it is, for a caller that has better
    things to do than wait (a trial trains on and reports later); past the patience they
    raise StorageUnreachable as always."""
    before = getattr(_local, "no_wait", False)
    _local.no_wait = on
    try:
        yield
    finally:
        _local.no_wait = before


_outages: dict[str, Outage] = {}
_outages_lock = threading.Lock()


def of(url: str, shown: str, patience: float | None = None, hide: str | None = None) -> Outage:
    """This process's :class:`Outage` of the storage ``url`` (``patience`` given: set to it)."""
    # SQLAlchemy's pool logs a traceback when a connection to a server that went away cannot
    # be closed cleanly (also when a stop signal lands in that close): the outage's own lines,
    # and the stop's, say what happened in one line each
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
    with _outages_lock:
        found = _outages.get(url)
        if found is None:
            found = _outages[url] = Outage(shown, DEFAULT_PATIENCE if patience is None else patience, hide)
        elif patience is not None:
            found.patience = patience
        return found


# BaseStorage's and BaseHeartbeat's methods: each call goes through the outage's retry rule
_METHODS = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_all_studies", "create_new_trial", "set_trial_param", "get_trial_id_from_study_id_trial_number",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials",
    "get_best_trial", "record_heartbeat", "_get_stale_trial_ids",
)  # fmt: skip


class PatientStorage(BaseStorage, BaseHeartbeat):
    """An Optuna storage whose calls wait out outages of the storage ``inner`` (an RDBStorage
    behind Optuna's cache, or a JournalStorage): the one place the retry rule is applied.
    Heartbeats are the inner storage's (none for a journal)."""

    def __init__(self, inner: BaseStorage, outage: Outage) -> None:
        self.inner, self.outage = inner, outage

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        tries = []

        def once() -> bool:
            if tries and self.inner.get_trial(trial_id).state == state:
                return True  # the attempt that "failed" was committed: the trial is not told twice
            tries.append(1)
            return self.inner.set_trial_state_values(trial_id, state, values)

        return self.outage.call(once)

    def get_heartbeat_interval(self) -> int | None:
        get = getattr(self.inner, "get_heartbeat_interval", None)
        return get() if get else None

    def get_heartbeat_stale_trial_callback(self):
        get = getattr(self.inner, "get_heartbeat_stale_trial_callback", None)
        return get() if get else None

    def remove_session(self) -> None:
        self.inner.remove_session()

    def __getstate__(self) -> dict[str, Any]:
        return {"inner": self.inner, "outage": self.outage}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __getattr__(self, name: str) -> Any:  # anything else of the inner storage, as it is
        if name in ("inner", "outage"):
            raise AttributeError(name)
        return getattr(self.inner, name)


class PatientCachedStorage(PatientStorage, _CachedStorage):
    """The same over Optuna's cache of an RDBStorage (``inner``), and still one to whoever asks
    (optuna-integration's Lightning callback under DDP wants a cached RDBStorage)."""

    @property
    def _backend(self) -> Any:
        return self.inner._backend


def _patient(name: str):
    def method(self, *args, **kwargs):
        return self.outage.call(getattr(self.inner, name), *args, **kwargs)

    method.__name__ = name
    return method


for _name in _METHODS:
    setattr(PatientStorage, _name, _patient(_name))
PatientStorage.__abstractmethods__ = frozenset()
