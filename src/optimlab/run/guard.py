"""One owner per run folder, checked before Hydra writes anything there.

Hydra's ``run_job`` writes ``.hydra/config.yaml`` (and the log) into the run folder
before optimlab's task starts, so a check in the task comes too late to keep a finished
run's folder as it was. :class:`RunFolderGuard` is a Hydra callback (registered in
``conf/config.yaml``) whose ``on_run_start`` runs for ``python train.py`` after composing
and before ``run_job``. It

1. takes the folder's lock (:class:`optimlab.run.folder.FolderLock`) — held until the
   process ends — or stops because another live process holds it;
2. asks :func:`optimlab.run.resume.for_run_folder` whether this command may write there
   (an empty folder, or a resume of the same config) and stops if not;
3. stops with one line when the folder cannot be written (read-only, no permission).

It stops with one line and exit code 2 (a SystemExit: Hydra's callback runner turns any
other exception into a mere warning). Nothing in the folder is created or changed
unless the run may go on. Sweeps (``-m``) are not guarded here: the sweeper owns its
trial folders, and the task takes each trial folder's lock itself.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from omegaconf import DictConfig, OmegaConf

from optimlab.errors import OptimlabError

try:  # Hydra >= 1.1
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]

log = logging.getLogger("optimlab")


class RunFolderGuard(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from pathlib import Path

        from optimlab.run.lock import LOCK_FILE, FolderLock

        try:
            run_dir = Path(str(config.hydra.run.dir)).absolute()  # what run_job will use (cached resolvers)
            lock = FolderLock(run_dir)
            existed = lock.try_existing()  # an existing lock file is taken without writing to it
            if existed or _has_files(run_dir, ignore=LOCK_FILE):
                self._may_write(run_dir, config)
            if not existed:
                lock.acquire()  # creates the folder and the lock file
                if _has_files(run_dir, ignore=LOCK_FILE):
                    self._may_write(run_dir, config)  # again, now that no one else can write
            else:
                lock.acquire()  # writes the holder's name: stops here if the folder is read-only
        except OptimlabError as e:
            log.error("%s", e)
            sys.stderr.flush()
            raise SystemExit(2) from None  # a command that may not run here (Hydra's own errors exit 1)

    @staticmethod
    def _may_write(run_dir, config: DictConfig) -> None:
        """Stop unless this command may write into the (non-empty) folder: reads only."""
        from optimlab.run import resume  # imports torch: only for a folder that holds something

        overrides = [str(o) for o in OmegaConf.to_container(config.hydra.overrides.task)]
        job = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        resume.for_run_folder(run_dir, job, overrides)


def _has_files(path, ignore: str) -> bool:
    try:
        return any(p.name != ignore for p in path.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # unreadable: let the full check say why
