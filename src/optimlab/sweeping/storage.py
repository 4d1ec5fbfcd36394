"""Optuna storages from one string, so that every worker, host and job opens the same study.

- ``sqlite:///path.db`` (one worker), ``postgresql://…`` or any SQLAlchemy URL (many hosts):
  an RDBStorage, with heartbeats (a trial whose worker stops beating is marked FAIL).
- ``journal:///path/file.journal``: Optuna's JournalFileBackend (many workers, one machine).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path

from optimlab.errors import StudyStorageError

JOURNAL = "journal://"
SQLITE = "sqlite:///"

log = logging.getLogger(__name__)
_cache: dict = {}
NAME_MAX = 255  # bytes per file or folder name on Linux, macOS and Windows file systems
EXAMPLES = "sqlite:///path/optuna.db, journal:///path/optuna.journal or postgresql://user@host/db"


def check(url: str) -> None:
    """Before anything opens ``url``: a StudyStorageError naming it (password hidden) and what
    to do when it is not a storage optimlab can use, or its file is damaged or not writable.
    Reads only; changes nothing on disk."""
    shown = f"hydra.sweeper.storage={redact(url)}"
    if url.startswith(JOURNAL):
        path = Path(url[len(JOURNAL):])
        check_writable(path, shown)
        if path.is_file() and path.stat().st_size:
            size = path.stat().st_size
            with open(path, "rb") as f:
                f.seek(size - 1)
                torn = f.read(1) != b"\n"
            if torn:
                with open(path, "rb") as f:
                    keep = f.read().rfind(b"\n") + 1
                raise StudyStorageError(
                    f"{shown}: the last line of {path} is torn (a process was killed while writing it); "
                    f"remove it with `truncate -s {keep} {path}` (keeps the {keep} bytes of whole records) and run again"
                )
        return
    from sqlalchemy.engine import make_url

    try:
        dialect = make_url(url).get_dialect()
    except Exception as e:  # noqa: BLE001 - not a URL, or no such database driver
        raise StudyStorageError(f"{shown} is not a storage optimlab can open ({_first_line(e)}); use {EXAMPLES}") from None
    if url.startswith(SQLITE):
        path = Path(url[len(SQLITE):])
        check_writable(path, shown)
        if path.is_file() and path.stat().st_size:
            try:
                with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                    result = conn.execute("PRAGMA quick_check").fetchone()
            except sqlite3.Error as e:
                result = (str(e),)
            if not result or result[0] != "ok":
                raise StudyStorageError(
                    f"{shown}: {path} is not a readable SQLite database ({result[0] if result else 'no answer'}); "
                    f"restore it from a backup, or move it away to start a new study"
                )
    del dialect


def check_writable(path: Path, shown: str) -> None:
    """The file (or the folder it will be created in) must be writable by this process."""
    too_long = [part for part in path.parts if len(os.fsencode(part)) > NAME_MAX]
    if too_long:
        raise StudyStorageError(
            f"{shown}: the name {too_long[0][:40]}… is {len(os.fsencode(too_long[0]))} bytes long, more than the "
            f"file system allows ({NAME_MAX} per name); choose a shorter one"
        )
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise StudyStorageError(f"{shown}: {folder} is not a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise StudyStorageError(f"{shown}: {path} is not writable by this user; fix its permissions or copy it elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StudyStorageError(f"{shown}: the folder {folder} is not writable by this user; choose a writable place")


def open_error(url: str, error: BaseException) -> StudyStorageError:
    """The one line for a storage that failed to open (no password in it)."""
    text = _first_line(error)
    password = _password(url)
    if password:
        text = text.replace(password, "***")
    return StudyStorageError(f"cannot open hydra.sweeper.storage={redact(url)}: {text}")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:  # noqa: BLE001
        return None


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


def outage_of(url: str, patience: float | None = None):
    """This process's record of the outages of ``url``'s storage (sweeping/outage.py)."""
    from optimlab.sweeping import outage

    return outage.of(url, redact(url), patience, _password(url) if is_rdb(url) else None)


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 patience: float | None = None):  # fmt: skip
    """An Optuna storage for ``url`` (cached per process) whose calls wait out outages of the
    storage for ``patience`` seconds (sweeping/outage.py; None: the process's patience for
    ``url``, else the default).

    With heartbeats, Optuna marks a trial FAIL when its worker stops beating; optimlab
    (not an Optuna callback) then continues it from its checkpoint (sweeping.attempts)."""
    from optimlab.sweeping.outage import PatientCachedStorage, PatientStorage

    outage = outage_of(url, patience)
    key = (url, heartbeat_interval, grace_period)
    if key in _cache:
        return _cache[key]
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, _CachedStorage
    from optuna.storages.journal import JournalFileBackend

    if url.startswith(JOURNAL):
        path = Path(url[len(JOURNAL):])
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = PatientStorage(JournalStorage(JournalFileBackend(str(path))), outage)
    else:
        kwargs: dict = {}
        if url.startswith(SQLITE):
            Path(url[len(SQLITE):]).parent.mkdir(parents=True, exist_ok=True)
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        else:
            kwargs["engine_kwargs"] = {"pool_pre_ping": True}
        if heartbeat_interval:
            kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # opening connects at once: a server that is not there now is one line (sweeper._open_study), not a wait
        storage = PatientCachedStorage(_CachedStorage(RDBStorage(_with_driver(url), **kwargs)), outage)
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
    if engine.dialect.name != "postgresql":  # a database without advisory locks: serialise the workers of this host only
        with study_lock(f"{JOURNAL}/tmp/optimlab-{key}", study_name):
            yield
        return
    outage = outage_of(url)

    def locked():
        conn = engine.connect()
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        except BaseException:
            conn.close()
            raise
        return conn

    conn = outage.call(locked)  # a server that is down is waited for, as every storage call
    try:
        yield
    finally:
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()
        except sqlalchemy.exc.SQLAlchemyError as e:  # the server dropped the lock with the connection
            log.debug("the study lock went with its connection: %s", e)
        finally:
            conn.close()


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
