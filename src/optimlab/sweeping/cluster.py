"""Trials as Ray tasks (``hydra/launcher=ray``, hydra-ray-launcher): the one module that knows
about Ray.

hydra-ray-launcher runs each job of a launcher call as a Ray task (``ray.remote(**remote)``
on ``ray.init(**init)``); optimlab's sweeper keeps ``n_workers`` such calls in flight, one
trial each. This module adds what the sweep needs around it:

- :func:`check_storage`: a study in a file (SQLite, journal) is only reachable from Ray
  workers on this machine: with a cluster elsewhere, one line before anything is written;
- :func:`prepare`: the launcher's config as a sweep needs it. A task of a killed Ray worker
  or a lost node is not retried by Ray (``max_retries: 0`` unless set): the sweeper marks the
  trial FAIL and continues it from its checkpoint, as on every launcher. Connecting to an
  existing cluster drops the launcher's ``object_store_memory`` default, which Ray refuses
  there (hydra issue #2893);
- :func:`connect`: Ray joined before the first trial, so the sweep takes back its stop
  signals (``ray.init`` replaces the SIGTERM handler);
- :func:`shared_instance`: a parent of several workers starts one local Ray instance for all;
- :func:`lost`: whether a launcher's error says the task's worker or node died;
- :class:`Tasks`: the tasks of a launcher call in flight, so that a stop signal reaches them:
  each running trial stops as it would in this process (SIGTERM: its run saves its last
  finished epoch and says ``preempted``), and :func:`disconnect` waits for them.

A trial's run records the Ray node, worker pid and assigned resources it ran with
(``environment.ray`` in its summary.json, run/provenance.py).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from optimlab.errors import SweepConfigError
from optimlab.run.folder import RunFolder
from optimlab.run.signals import SIGNALS, error_for, status_of

RAY_LAUNCHER = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
ADDRESS_KEY = "hydra.launcher.ray.init.address"
ADDRESS_ENV = "RAY_ADDRESS"  # what ray.init(address=None) connects to when set
LOCAL = (None, "", "local")  # ray.init starts a new Ray instance on this machine


def is_ray(launcher_cfg: Any) -> bool:
    return isinstance(launcher_cfg, DictConfig) and launcher_cfg.get("_target_") == RAY_LAUNCHER


def address(launcher_cfg: DictConfig) -> str | None:
    """The cluster ``ray.init`` joins: ``hydra.launcher.ray.init.address``, else ``RAY_ADDRESS``;
    None: a new local instance."""
    given = (launcher_cfg.get("ray") or {}).get("init", {}).get("address")
    return str(given) if given not in LOCAL else os.environ.get(ADDRESS_ENV) or None


def _host(addr: str) -> str:
    rest = addr.split("://", 1)[-1]  # ray://head:10001 (Ray Client), or head:6379
    host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 or rest.startswith("[") else rest
    return host.strip("[]")


def _own_addresses() -> set[str]:
    import psutil

    found = {socket.gethostname(), socket.getfqdn(), "localhost"}
    for addrs in psutil.net_if_addrs().values():
        found.update(a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6))
    return found


def on_this_machine(addr: str | None) -> bool:
    """Whether the cluster at ``addr`` runs here: a new local instance, a loopback address or one
    of this machine's own. ``auto`` (whatever cluster Ray finds) is not known to be."""
    if addr in LOCAL:
        return True
    host = _host(addr)
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    return host in _own_addresses()


def check_storage(url: str, launcher_cfg: Any, shown_url: str) -> None:
    """A study in a file on this machine cannot be reached from Ray workers elsewhere."""
    from optimlab.sweeping.storage import JOURNAL, SQLITE

    if not is_ray(launcher_cfg) or not url.startswith((SQLITE, JOURNAL)):
        return
    addr = address(launcher_cfg)
    if on_this_machine(addr):
        return
    given = f"{ADDRESS_KEY}={addr}" if (launcher_cfg.ray.init.get("address") not in LOCAL) else f"{ADDRESS_ENV}={addr}"
    raise SweepConfigError(
        f"hydra.sweeper.storage={shown_url} is a file on this machine, but {given} is a Ray cluster that is not "
        f"(only a loopback address or one of this machine's own is): its workers cannot reach the study; use a "
        f"PostgreSQL storage every node can reach, hydra.sweeper.storage=postgresql://user:password@host/db"
    )


def prepare(launcher: Any, launcher_cfg: Any) -> None:
    """The Ray launcher's settings as a sweep needs them (see the module's docstring)."""
    if not is_ray(launcher_cfg) or not hasattr(launcher, "ray_cfg"):
        return
    with open_dict(launcher.ray_cfg):
        remote, init = launcher.ray_cfg.remote, launcher.ray_cfg.init
        with open_dict(remote), open_dict(init):
            if "max_retries" not in remote:
                remote.max_retries = 0
            if address(launcher_cfg) is not None:  # an existing cluster: Ray refuses the launcher's default
                init.setdefault("object_store_memory", None)


def connect(launcher: Any, launcher_cfg: Any) -> bool:
    """Join Ray (the launcher's own ``start_ray``) before the launcher's first call, so that the
    sweep can take back the stop signals ``ray.init`` takes; whether it just joined."""
    if not is_ray(launcher_cfg) or not hasattr(launcher, "ray_cfg"):
        return False
    import ray
    from hydra_plugins.hydra_ray_launcher._launcher_util import start_ray

    if ray.is_initialized():
        return False
    start_ray(launcher.ray_cfg.init)
    return True


def shared_instance(launcher_cfg: Any) -> dict[str, str]:
    """The environment of a parent's workers: one local Ray instance, started here, that all of
    them join (each would otherwise start its own, each scheduling on every core)."""
    if not is_ray(launcher_cfg) or address(launcher_cfg) is not None:
        return {}
    import ray
    from omegaconf import OmegaConf

    if not ray.is_initialized():
        ray.init(**{k: v for k, v in OmegaConf.to_container(launcher_cfg.ray.init, resolve=True).items() if k != "address"})
    return {ADDRESS_ENV: ray.get_runtime_context().gcs_address}


def unwrapped(error: SystemError) -> BaseException:
    """The stop (Preempted, KeyboardInterrupt) that a signal raised inside Ray's code: Ray hands
    it on wrapped in a SystemError (or two); any other SystemError as it is."""
    cause = error.__cause__
    while isinstance(cause, SystemError):
        cause = cause.__cause__
    return cause if cause is not None and status_of(cause) else error


def lost(error: BaseException) -> str | None:
    """Why a launcher call failed when its task's process or node died (Ray's system errors,
    not the job's own exception); None for any other error."""
    ray = sys.modules.get("ray")
    if ray is None:
        return None
    exceptions = ray.exceptions
    if not isinstance(error, exceptions.RayError) or isinstance(error, (exceptions.RayTaskError, exceptions.TaskCancelledError)):
        return None
    first = (str(error).strip().splitlines() or [""])[0]
    return f"its Ray task was lost ({type(error).__name__}: {first})"[:500]


STOP_WAIT = 5.0  # seconds a stopped sweep waits for its signalled tasks to end before it leaves Ray


class Tasks:
    """The Ray tasks of this worker's launcher call in flight, each with its run folder.

    hydra-ray-launcher submits a call's jobs and waits for them (``ray.get``) without handing
    out their ObjectRefs: while a call runs (:meth:`kept`), the plugin's own submit function
    (``_core.launch_job_on_ray``) is wrapped to keep each ref. A stop signal that ends the call
    goes on to its tasks (:meth:`stop`); :func:`disconnect` then waits for them (:meth:`finish`).
    """

    def __init__(self) -> None:
        self.running: list[tuple[Any, Path | None]] = []

    @contextlib.contextmanager
    def kept(self, launcher_cfg: Any, stop: Any) -> Iterator[None]:
        """Within the block, the launcher's tasks are kept, and ``stop`` (sweeping.workers.Stop)
        raises KeyboardInterrupt, which ends a ``ray.get`` (any other exception a handler raises
        there, Ray drops and waits on); the stop it was ends the block and goes on to the tasks."""
        if not is_ray(launcher_cfg):
            yield
            return
        from hydra_plugins.hydra_ray_launcher import _core

        submit = _core.launch_job_on_ray

        def keeping(hydra_context, ray_remote, sweep_config, task_function, singleton_state):
            ref = submit(hydra_context, ray_remote, sweep_config, task_function, singleton_state)
            self.running.append((ref, _run_dir(sweep_config)))
            return ref

        _core.launch_job_on_ray, stop.interrupts = keeping, True
        try:
            yield
        except BaseException as e:
            error = unwrapped(e) if isinstance(e, SystemError) else e
            if isinstance(error, KeyboardInterrupt) and stop.signum is not None:
                error = error_for(stop.signum)  # SIGTERM: Preempted
            stopped = status_of(error)
            if stopped:  # kept for finish()
                self.stop(SIGNALS[stopped])
            else:  # a lost task's error, or the job's own: Ray has the rest
                self.running.clear()
            if error is e:
                raise
            raise error from None
        finally:
            _core.launch_job_on_ray, stop.interrupts = submit, False
        self.running.clear()

    def stop(self, signum: int) -> None:
        """Stop each task still running as this process was stopped. On SIGTERM, a task on this machine
        whose run has begun gets SIGTERM itself: its run saves its last finished epoch and says
        ``preempted``. Any other (Ctrl-C, a task elsewhere) is cancelled by Ray (``ray.cancel``: a
        KeyboardInterrupt in the task, its run saves the same and says ``interrupted``; Ray's processes
        block a real SIGINT); a task not started yet never starts."""
        import ray

        refs = [ref for ref, _ in self.running]
        if not refs:
            return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        local = _nodes_here() if signum == signal.SIGTERM else set()
        for ref, run_dir in self.running:
            if ref in ready:
                continue
            pid = _run_pid(ref, run_dir, local)
            try:
                if pid is not None:
                    os.kill(pid, signum)
                else:
                    ray.cancel(ref)
            except (OSError, ray.exceptions.RayError):
                pass  # it has ended meanwhile

    def finish(self, within: float = STOP_WAIT) -> None:
        """Wait up to ``within`` s for the stopped tasks to end (their runs write their last
        summary.json); one still running then ends as this process leaves Ray."""
        import ray

        refs = [ref for ref, _ in self.running]
        self.running.clear()
        if not refs:
            return
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=within)
        for ref in ready:  # read, so that Ray reports no "unhandled error" for a stopped task
            with contextlib.suppress(Exception):
                ray.get(ref, timeout=0)


def _run_dir(sweep_config: Any) -> Path | None:
    """The folder a job of the launcher runs in (``hydra.sweep.dir``/``hydra.sweep.subdir``)."""
    try:
        return Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
    except Exception:  # noqa: BLE001 - then the task is cancelled through Ray
        return None


def _nodes_here() -> set[str]:
    """The ids of the cluster's live nodes on this machine."""
    import ray

    try:
        return {n["NodeID"] for n in ray.nodes()
                if n.get("Alive") and n.get("NodeManagerAddress") and on_this_machine(n["NodeManagerAddress"])}  # fmt: skip
    except Exception:  # noqa: BLE001 - then every task is cancelled through Ray
        return set()


def _run_pid(ref: Any, run_dir: Path | None, nodes: set[str]) -> int | None:
    """The pid of the Ray worker running the task of ``ref``, when it runs on this machine and its run
    has begun (its summary.json says ``running`` and names this very task: run/provenance.py)."""
    if run_dir is None:
        return None
    summary = RunFolder(run_dir, create=False).summary()
    where = (summary.get("environment") or {}).get("ray") or {}
    if summary.get("status") != "running" or where.get("node_id") not in nodes:
        return None
    return where.get("pid") if where.get("task_id") == ref.task_id().hex() else None


def disconnect(tasks: Tasks | None = None) -> None:
    """A stopped sweep leaves Ray once its stopped tasks have ended (``tasks``, at most
    :data:`STOP_WAIT` s): a task still running then ends with it, instead of training on
    until this process exits."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        if tasks is not None:
            tasks.finish()
        ray.shutdown()
