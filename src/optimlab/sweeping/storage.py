"""Optuna storages from one string, so that every worker, host and job opens the same study.

- ``sqlite:///path.db`` (one worker), ``postgresql://…`` or any SQLAlchemy URL (many hosts):
  an RDBStorage, with heartbeats and retry of trials whose worker died.
- ``journal:///path/file.journal``: Optuna's JournalFileBackend (many workers, one machine).
"""

from __future__ import annotations

import contextlib
import fcntl
import zlib
from collections.abc import Iterator
from pathlib import Path

JOURNAL = "journal://"
SQLITE = "sqlite:///"

_cache: dict = {}


def default_storage_url(sweep_dir: Path, n_workers: int) -> str:
    """The storage a sweep uses when none is configured: a file in the sweep folder."""
    db, journal = sweep_dir / "optuna.db", sweep_dir / "optuna.journal"
    if journal.exists() or (n_workers > 1 and not db.exists()):
        return f"{JOURNAL}{journal.resolve()}"
    return f"{SQLITE}{db.resolve()}"


def absolute_url(url: str) -> str:
    """File URLs made absolute, so workers and jobs in other folders open the same file."""
    for prefix in (SQLITE, JOURNAL):
        if url.startswith(prefix):
            path = url[len(prefix):]
            if prefix == JOURNAL and path.startswith("/"):
                return url
            return prefix + str(Path(path).resolve())
    return url


def is_rdb(url: str) -> bool:
    return not url.startswith(JOURNAL)


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int = 0):
    """An Optuna storage for ``url`` (cached per process)."""
    key = (url, heartbeat_interval, grace_period, max_retry)
    if key in _cache:
        return _cache[key]
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryFailedTrialCallback
    from optuna.storages.journal import JournalFileBackend

    if url.startswith(JOURNAL):
        path = Path(url[len(JOURNAL):])
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(path)))
    else:
        kwargs: dict = {}
        if url.startswith(SQLITE):
            Path(url[len(SQLITE):]).parent.mkdir(parents=True, exist_ok=True)
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        else:
            kwargs["engine_kwargs"] = {"pool_pre_ping": True}
        if heartbeat_interval:
            kwargs.update(
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                failed_trial_callback=RetryFailedTrialCallback(max_retry=max_retry) if max_retry else None,
            )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = RDBStorage(_with_driver(url), **kwargs)
    _cache[key] = storage
    return storage


@contextlib.contextmanager
def study_lock(url: str, study_name: str) -> Iterator[None]:
    """Mutual exclusion between every worker of one study, wherever it runs.

    A worker holds it while it counts the study's trials and asks for new ones, so two
    workers racing for the last slot never both create a trial. The lock lives where the
    study does: a PostgreSQL advisory lock for a server (released by the server
    when a worker's connection dies), an OS file lock beside an SQLite or journal file
    (released by the kernel when the process dies), so a dead worker never blocks others.
    """
    if url.startswith((JOURNAL, SQLITE)):
        # not `<file>.lock`: JournalFileBackend's own lock is a symlink of that name
        path = Path(url[len(JOURNAL if url.startswith(JOURNAL) else SQLITE):] + ".claims")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    import sqlalchemy

    key = zlib.crc32(f"optimlab:{study_name}".encode())  # advisory locks are keyed by integers
    engine = _lock_engine(url)
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            release = ("SELECT pg_advisory_unlock(:k)", {"k": key})
        else:  # a database without advisory locks: serialise the workers of this host only
            conn.close()
            with study_lock(f"{JOURNAL}/tmp/optimlab-{key}", study_name):
                yield
            return
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text(release[0]), release[1])
            conn.commit()


def _lock_engine(url: str):
    key = ("lock", url)
    if key not in _cache:
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        _cache[key] = sqlalchemy.create_engine(_with_driver(url), poolclass=NullPool)
    return _cache[key]


def _with_driver(url: str) -> str:
    """postgresql:// with the installed driver (SQLAlchemy 2.1 defaults to psycopg 3)."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def redact(url: str) -> str:
    """The URL with its password hidden, for logs and summaries."""
    if url.startswith(JOURNAL):
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy can parse: show nothing of it
        return "<storage URL>"
