"""The errors optimlab reports to users as one clear line (no traceback wall).

Every error type optimlab raises is defined here. The sweep's own errors also derive from
Hydra's CompactHydraException, which Hydra prints as one line when they end a multirun.
"""

from __future__ import annotations

import errno
from pathlib import Path

from hydra.errors import CompactHydraException


class OptimlabError(Exception):
    """A problem the user can fix; the message says what and how."""

    exit_code = 1
    status = "failed"


class ConfigError(OptimlabError):
    """Bad input found before training: a config value, a dataset, a device, a run folder."""

    exit_code = 2
    status = "invalid_config"


# The same kind of mistake, named for where it was found.
class DataError(ConfigError):
    """A dataset that is missing or unreadable."""


class DeviceError(ConfigError):
    """A device that was asked for and is not present."""


class CheckpointError(ConfigError):
    """A run folder to resume from whose checkpoint is missing, corrupt or does not match."""


class FolderInUse(ConfigError):
    """The run folder is locked by another live process (one folder holds one run)."""


class FolderTaken(ConfigError):
    """The run folder holds another run's results (or is a sweep's folder): nothing is written there."""


# THE errno list of "the run folder cannot be written": errno -> what to tell the user
STORAGE_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENAMETOOLONG: "a folder or file name is longer than the file system allows (255 bytes per name)",
}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
STORAGE_ERRNOS = tuple(STORAGE_HINTS)


class StorageError(OptimlabError):
    """The run folder cannot be written (disk full, read-only, no permission)."""

    @classmethod
    def of(cls, path: Path | str, error: OSError, run_dir: Path | str | None = None) -> StorageError:
        """The one line for ``error`` writing ``path`` (a file of the run folder ``run_dir``)."""
        why = STORAGE_HINTS.get(error.errno, error.strerror or type(error).__name__)
        if error.errno in DISK_FULL:
            todo = "free some space there; the last checkpoint is intact" + (
                f", continue with resume={run_dir}" if run_dir is not None else ", then run the same command again"
            )
        elif error.errno == errno.ENAMETOOLONG:
            todo = "choose a shorter folder name (hydra.run.dir=... / hydra.sweep.dir=...)"
        elif error.errno in STORAGE_ERRNOS:
            todo = "choose a folder you can write (hydra.run.dir=... / hydra.sweep.dir=...)"
        else:
            todo = "check the file system"
        found = cls(f"cannot write {path}: {why} ({error.strerror or error}); {todo}")
        found.errno, found.path, found.why = error.errno, str(path), why
        return found


def is_disk_full(error: BaseException) -> bool:
    """A full disk or an exceeded quota: an OSError, or the StorageError made of one."""
    return getattr(error, "errno", None) in DISK_FULL


class Diverged(OptimlabError):
    """The training loss became NaN or infinite."""

    status = "diverged"

    def __init__(self, epoch: int, step: int, loss: float, last_finite_loss: float | None):
        self.epoch, self.step, self.loss, self.last_finite_loss = epoch, step, loss, last_finite_loss
        super().__init__(
            f"training diverged: loss became {loss} at epoch {epoch}, step {step} "
            f"(last finite loss: {last_finite_loss}); try a smaller lr"
        )

    def __reduce__(self):  # picklable, so launchers running jobs in other processes return it
        return (type(self), (self.epoch, self.step, self.loss, self.last_finite_loss))


class Preempted(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt: nothing catches it by accident)."""

    status = "preempted"


class Pruned(OptimlabError):
    """A sweep's pruner stopped the trial early: not a failure."""

    status = "pruned"


class SweepConfigError(ConfigError, CompactHydraException):
    """A sweep whose settings or search space cannot run; found before the first trial."""


class StudyStorageError(ConfigError, CompactHydraException):
    """A study storage (``hydra.sweeper.storage``) that cannot be opened or written."""


class SweepStopped(OptimlabError, CompactHydraException):
    """A sweep that cannot go on: too many failed trials, or a worker process that died."""


class StorageUnreachable(SweepStopped):
    """The study's storage stayed unreachable longer than ``hydra.sweeper.storage_patience``:
    the sweep stops, its running trials are marked to continue when the same command runs again."""

    exit_code = 75  # EX_TEMPFAIL: a temporary failure, run the same command again
    status = "storage_unreachable"
