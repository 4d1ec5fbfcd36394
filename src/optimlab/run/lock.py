"""One process writes a run folder: an OS file lock in the folder.

Light on purpose (no torch): ``python train.py`` takes the lock before anything heavy is
imported, so a command that may not run costs about a second.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from optimlab.errors import FolderInUse, StorageError

LOCK_FILE = ".lock"  # flock'ed by the one process writing the folder

_HELD: dict[Path, int] = {}  # folder -> fd of its flock'ed lock file, held by this process


class FolderLock:
    """One process writes a run folder: an OS lock (``flock``) on ``<folder>/.lock``.

    The kernel drops the lock when its process dies, however it dies, so a crash never
    leaves a stale lock. The file itself stays (empty of meaning once unlocked) and names
    the holder (pid, host, start time) for the error the next process gets. Held locks are
    per process: acquiring a folder this process already holds is a no-op. (On network
    file systems ``flock`` is only as good as the file system's lock support.)
    """

    def __init__(self, path: Path):
        self.path = Path(path).absolute()
        self.file = self.path / LOCK_FILE
        self._acquired = False

    @property
    def held(self) -> bool:
        return self.path in _HELD

    def try_existing(self) -> bool:
        """Take the lock if its file already exists, without creating or changing anything
        (opening a file and locking it writes nothing to it).

        False: there is no lock file yet. Raises FolderInUse when another process holds it."""
        if self.held:
            return True
        for mode in (os.O_RDWR, os.O_RDONLY):  # read-only: a folder we cannot write (acquire says so)
            try:
                fd = os.open(self.file, mode)
                break
            except FileNotFoundError:
                return False
            except OSError:
                continue
        else:
            return False
        self._flock(fd)
        return True

    def acquire(self) -> None:
        """Take the lock (creating the folder and the lock file), then write the holder's name.

        Raises FolderInUse (another process holds it) or StorageError (the folder cannot be
        created or written)."""
        if not self.held:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
            except OSError as e:
                raise StorageError.of(self.path, e, run_dir=self.path) from e
            self._flock(fd)
        fd = _HELD[self.path]
        holder = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}) + "\n"
        try:
            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
                raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(self.file))
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
        except OSError as e:
            self.release()
            raise StorageError.of(self.path, e, run_dir=self.path) from e

    def release(self) -> None:
        fd = _HELD.pop(self.path, None)
        if fd is not None:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> FolderLock:
        self._acquired = not self.held
        if self._acquired:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        if self._acquired:
            self.release()

    def _flock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderInUse(
                    f"run folder {self.path} is in use by {holder}: one folder holds one run; wait for "
                    f"it to end, or give this run another hydra.run.dir"
                ) from None
            raise StorageError.of(self.file, e, run_dir=self.path) from e
        _HELD[self.path] = fd


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"process {info['pid']} on {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _now() -> str:
    from optimlab.run.provenance import now_iso

    return now_iso()
