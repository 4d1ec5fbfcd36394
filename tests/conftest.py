"""Shared test helpers: Hydra compose, tiny configs, `python train.py` in this process (Hydra's own
main) and, where a process boundary is under test, real subprocesses."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import runpy
import signal
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from optimlab.config import resolvers

resolvers.register()  # ${optimlab.uid:} in the run-dir patterns

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
TRAIN_PY = ROOT / "train.py"

# A tiny synthetic dataset: one epoch trains in well under a second on CPU.
TINY = [
    "data=synthetic",
    "data.train_size=256",
    "data.val_size=64",
    "data.test_size=64",
    "batch_size=32",
    "epochs=1",
    "tensorboard=false",
    "quiet=true",
    "plots=false",
]


def compose_config(overrides=()):
    """The composed job config (no `hydra` node), as `python train.py <overrides>` would get."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(config_name="config", overrides=list(overrides))


def train_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None,
              process: bool = False) -> subprocess.CompletedProcess:
    """`python train.py <args>` in ``cwd`` (outputs/ and multirun/ land there).

    In this process (Hydra's own main, as ``python train.py`` calls it) unless a process
    boundary is what the test is about: ``process=True``, or an ``env`` that loads the fault
    hooks (``PYTHONPATH``), which only a new interpreter picks up. A sweep's workers are real
    processes either way."""
    if process or "PYTHONPATH" in (env or {}):
        return run_python(str(TRAIN_PY), *args, cwd=cwd, timeout=timeout, env=env)
    return run_in_process(args, cwd=cwd, env=env)


def run_python(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python <args>`` for real: a new interpreter, its output captured."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)  # fmt: skip


def start_python(*args: str, cwd: Path, env: dict | None = None, module: str | None = None,
                 umask: int | None = None, **popen) -> subprocess.Popen:
    """``python train.py <args>`` (or ``python -m <module> <args>``) started for real, for a
    test that signals or kills it; stdout and stderr merged into one pipe (read it with
    ``finish``)."""
    args = ("-m", module, *args) if module else (str(TRAIN_PY), *args)

    def as_from_a_shell():  # a foreground command: Ctrl-C and SIGTERM at their defaults, whatever this process set
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_DFL)
        if umask is not None:
            os.umask(umask)

    popen.setdefault("preexec_fn", as_from_a_shell)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    """Wait for a started process: its exit code and its whole output."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # timed out: never leave it running
            proc.kill()
    return proc.returncode, out


def run_in_process(args, cwd: Path, env: dict | None = None, module: str | None = None,
                   script: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python train.py <args>`` (or ``python -m <module> <args>``, or ``python <script>
    <args>``, a one-file app beside its config) here, as if from a shell in
    ``cwd``: argv, environment, working folder and output are its own for the call, and
    everything a run changes in this process (logging, Hydra's global state, torch's
    switches) is put back afterwards. The exit code is what the process would exit with."""
    import torch
    from hydra.core.global_hydra import GlobalHydra

    if module:
        def main():
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    elif script:
        def main():
            folder = str(Path(cwd, script).resolve().parent)
            sys.path.insert(0, folder)  # as `python <script>` puts its folder first
            try:
                runpy.run_path(script, run_name="__main__")  # sys.argv[0] as typed
            finally:
                sys.path.remove(folder)
    else:
        from optimlab.cli import main
    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    saved_streams = sys.stdout, sys.stderr
    saved_torch = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    saved_raise = logging.raiseExceptions
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # a run or ray.init may set them
    saved_logging = _logging_state()
    out, err = io.StringIO(), io.StringIO()
    code = 0
    os.environ.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    os.chdir(cwd)
    argv = [module or script or str(TRAIN_PY), *map(str, args)]
    sys.argv = list(argv)
    sys.stdout, sys.stderr = out, err
    try:
        with _interpreter_warnings(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            err.write(f"{e.code}\n")
    except BaseException:  # what the interpreter would print and exit 1 with
        err.write(traceback.format_exc())
        code = 1
    finally:
        sys.stdout, sys.stderr = saved_streams
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        GlobalHydra.instance().clear()
        _restore_logging(saved_logging)
        logging.raiseExceptions = saved_raise
        torch.set_num_threads(saved_torch[0])
        torch.use_deterministic_algorithms(saved_torch[1])
        for s, handler in saved_signals.items():
            signal.signal(s, handler)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _interpreter_warnings(stream):
    """Warnings as ``python`` shows them (its default filters, printed to stderr), not as
    pytest collects them: a test that says "no warning reaches the user" sees them."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: stream.write(
            warnings.formatwarning(message, category, filename, lineno, line))  # fmt: skip
        yield


def _loggers():
    return [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]


def _logging_state() -> dict:
    return {lg: (lg.handlers[:], lg.level, lg.disabled, lg.propagate) for lg in _loggers()}


def _restore_logging(saved: dict) -> None:
    """Each logger as it was; a handler a run added (Hydra's file and console handlers) closed."""
    for logger in _loggers():
        handlers, level, disabled, propagate = saved.get(logger, ([], 0, False, True))
        for handler in logger.handlers[:]:
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.handlers[:] = handlers
        logger.disabled, logger.propagate = disabled, propagate
        logger.setLevel(level)  # and clears logging's level cache


def run_dirs(base: Path, pattern: str = "outputs/*/*") -> list[Path]:
    """Run folders under ``base`` (single runs by default), oldest first."""
    return sorted(p for p in base.glob(pattern) if p.is_dir())


@pytest.fixture
def tiny():
    return list(TINY)


# The files that take longest, first: `pytest -n 2` hands out whole files in collection order,
# and a long file handed out last would keep one core busy after the other has finished.
LONGEST_FIRST = (
    "test_reliability_sweeps.py", "test_parallel.py", "test_storage_outage.py", "test_ray.py", "test_foreign_apps.py",
    "test_repro.py", "test_foundation.py", "test_reliability_runs.py", "test_study_definition.py",
    "test_bench_gpu.py", "test_sweep.py", "test_errors.py", "test_sweep_speed.py", "test_loggers.py",
    "test_packed_sweep.py", "test_sweep_disk_full.py", "test_warm_start.py",
)  # fmt: skip


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order
