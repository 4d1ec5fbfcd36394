"""Single runs on a real cluster: SIGTERM, requeue into the same folder, one owner per run
folder, umask permissions, and one-line errors for folders that cannot be written.

A run that a fault hook stops or kills, or that needs its own umask, is a real ``python
train.py`` subprocess, and every signal a real ``os.kill``; the runs that continue them run
in the test's process. A run is stopped at a known training step by
``tests/faults/sitecustomize.py`` (``OPTIMLAB_PAUSE_AT``): it writes a file and waits, so
the test acts on an observable event, never after a guessed sleep. Disk-full and
read-only folders are real tmpfs mounts (root only; skipped elsewhere).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, finish, run_in_process
from conftest import start_python as start

from optimlab.run.folder import RunFolder
from test_repro import assert_same_state, load_checkpoint, metrics, snapshot

FAULTS = str(Path(__file__).resolve().parent / "faults")
# Adam + OneCycle (stepped every batch): 8 steps per epoch, 3 epochs; resume must restore all of it
RUN = [*TINY, "data.image_size=8", "data.channels=1", "seed=3", "optimizer=adam", "scheduler=onecycle", "lr=3e-3", "epochs=3"]


def run(*args: str, cwd: Path, env: dict | None = None, **kw) -> tuple[int, str]:
    """A command to its end: exit code and output. A real process where the fault hooks or
    a umask are part of it, in this process otherwise."""
    if kw.get("umask") is None and "PYTHONPATH" not in (env or {}):
        done = run_in_process(args, cwd=cwd, env=env, module=kw.get("module"))
        return done.returncode, done.stdout + done.stderr
    return finish(start(*args, cwd=cwd, env=env, **kw))


def paused_at(spec: str, flag: Path) -> dict[str, str]:
    """Env that pauses the run before training step ``E:S`` until ``flag`` is removed."""
    path = os.pathsep.join(filter(None, [FAULTS, os.environ.get("PYTHONPATH")]))
    return {"OPTIMLAB_PAUSE_AT": spec, "OPTIMLAB_PAUSE_FILE": str(flag), "PYTHONPATH": path}


def wait_paused(proc: subprocess.Popen, flag: Path, timeout: float = 240) -> int:
    """Wait until the run has reached its pause point; its pid."""
    deadline = time.monotonic() + timeout
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before its pause point:\n{proc.communicate()[0][-3000:]}")
        assert time.monotonic() < deadline, "the run did not reach its pause point in time"
        time.sleep(0.05)
    return int(flag.read_text())


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def one_line(out: str, text: str) -> str:
    lines = [line for line in out.splitlines() if text in line]
    assert len(lines) == 1, f"expected one line with {text!r}:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Path:
    """An uninterrupted run (umask 022), the reference for every resumed one."""
    cwd = tmp_path_factory.mktemp("ref")
    code, out = run(*RUN, "hydra.run.dir=ref", cwd=cwd, umask=0o022)
    assert code == 0, out[-3000:]
    assert "momentum" not in out  # no warning: momentum was not set on the command line
    return cwd / "ref"


# --------------------------------------------------------------------------- SIGTERM and requeue


@pytest.mark.slow
def test_sigterm_mid_epoch_then_the_same_command_continues_bit_exact(ref, tmp_path):
    """SIGTERM at step 3 of epoch 2: exit 143, one line, summary `preempted`, epoch 1's
    checkpoint intact; the same command again continues in that folder and ends with the
    uninterrupted run's metrics and weights, bit for bit."""
    flag, cmd = tmp_path / "paused", [*RUN, "hydra.run.dir=job"]
    proc = start(*cmd, cwd=tmp_path, env=paused_at("2:3", flag))
    pid = wait_paused(proc, flag)
    assert pid == proc.pid
    before = (tmp_path / "job" / "checkpoint.pt").read_bytes()
    os.kill(pid, signal.SIGTERM)
    code, out = finish(proc)
    job = tmp_path / "job"
    assert code == 143, out[-3000:]
    line = one_line(out, "preempted (SIGTERM)")
    assert str(job) in line
    s = summary(job)
    assert s["status"] == "preempted" and s["epochs_completed"] == 1
    assert (job / "checkpoint.pt").read_bytes() == before  # the last finished epoch's, untouched
    assert load_checkpoint(job)["epoch"] == 1 and len(metrics(job)) == 1
    assert not list(job.glob(".*.tmp")), "half-written files left"
    first_row = metrics(job, timing=True)[0]

    code, out = run(*cmd, cwd=tmp_path)  # the requeue: the very same command
    assert code == 0, out[-3000:]
    assert "resume: continuing in place at epoch 1/3" in out
    assert metrics(job) == metrics(ref)
    assert_same_state(job, ref)
    s = summary(job)
    assert s["status"] == "completed" and [r["epoch"] for r in s["requeued"]] == [1]
    assert s["objective"] == summary(ref)["objective"] and s["test"] == summary(ref)["test"]
    assert metrics(job, timing=True)[0] == first_row  # epoch 1 was not trained again


@pytest.mark.slow
def test_resume_into_its_own_folder_continues_in_place(ref, tmp_path):
    """`resume=X hydra.run.dir=X` after a kill -9: continues X itself (Hydra's rewrite of
    .hydra/config.yaml does not matter: the checkpoint keeps the trained config)."""
    env = {"OPTIMLAB_KILL_AT": "2:3", "PYTHONPATH": os.pathsep.join(filter(None, [FAULTS, os.environ.get("PYTHONPATH")]))}
    code, _ = run(*RUN, "hydra.run.dir=x", cwd=tmp_path, env=env)
    x = tmp_path / "x"
    assert code == -signal.SIGKILL and load_checkpoint(x)["epoch"] == 1

    code, out = run(f"resume={x}", f"hydra.run.dir={x}", cwd=tmp_path)  # no other override: the saved config
    assert code == 0, out[-3000:]
    assert metrics(x) == metrics(ref)
    assert_same_state(x, ref)
    assert summary(x)["status"] == "completed" and summary(x)["resumed_from"]["run_dir"] == str(x)
    # the folder still knows what it trained: a later resume or rerun reads the same config
    trained = RunFolder(x, create=False).trained_config()
    reference = RunFolder(ref, create=False).trained_config()
    trained.resume = reference.resume = None
    assert trained == reference


# --------------------------------------------------------------------------- one owner per folder


@pytest.mark.slow
def test_two_runs_into_one_folder_exactly_one_runs(tmp_path):
    """A second process into a folder in use stops with one line naming the folder and the
    holder, and changes nothing there; the first finishes normally."""
    flag, cmd = tmp_path / "paused", [*RUN, "epochs=2", "hydra.run.dir=shared"]
    first = start(*cmd, cwd=tmp_path, env=paused_at("1:2", flag), umask=0o027)
    pid = wait_paused(first, flag)
    shared = tmp_path / "shared"
    before = snapshot(shared)
    for second in (cmd, [*cmd, "lr=0.1"]):  # the same command, and another config
        code, out = run(*second, cwd=tmp_path)
        assert code == 2, out[-3000:]
        line = one_line(out, "is in use by")
        assert str(shared) in line and f"process {pid} on " in line
        assert snapshot(shared) == before
    flag.unlink()
    code, out = finish(first)
    assert code == 0, out[-3000:]
    assert summary(shared)["status"] == "completed" and len(metrics(shared)) == 2
    # the holder's umask 027: files 0640 (not mkstemp's 0600)
    modes = {p.name: p.stat().st_mode & 0o777 for p in shared.rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o640}, modes


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    """The lock is the kernel's: SIGKILL its holder and the folder is free at once."""
    hold = "import sys, time; from optimlab.run.lock import FolderLock; FolderLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "f")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        from optimlab.errors import FolderInUse
        from optimlab.run.lock import FolderLock

        with pytest.raises(FolderInUse, match=rf"{re.escape(str(tmp_path / 'f'))} is in use by process {proc.pid} on "):
            FolderLock(tmp_path / "f").acquire()
        proc.kill()
        proc.wait(timeout=30)
        with FolderLock(tmp_path / "f") as lock:
            assert lock.held
        assert not lock.held
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_a_finished_folder_reused_by_another_command_is_byte_identical(ref, tmp_path):
    """`hydra.run.dir=<finished run>` with a bad override, another config, or resume=null:
    one line, exit 2, and every file of the finished run unchanged (mtimes too)."""
    before = snapshot(ref)
    cases = [
        (["lr=-1"], "already holds a different config (lr: saved 0.003, now -1"),
        (["lr=0.1"], "already holds a different config (lr: saved 0.003, now 0.1"),
        (["resume=null"], "already holds a run"),
    ]
    for extra, expected in cases:
        code, out = run(*RUN, f"hydra.run.dir={ref}", *extra, cwd=tmp_path)
        assert code == 2, out[-3000:]
        line = one_line(out, expected)
        assert str(ref) in line and "nothing was changed there" in line
        assert snapshot(ref) == before, extra
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow  # the reference run it reads takes longer than a few seconds
def test_umask_022_gives_0644_files(ref):
    modes = {str(p.relative_to(ref)): p.stat().st_mode & 0o777 for p in ref.rglob("*") if p.is_file()}
    assert {"checkpoint.pt", "best.pt", "metrics.csv", "summary.json", "train.log", ".lock", ".hydra/config.yaml"} <= set(modes)
    assert set(modes.values()) == {0o644}, modes


# --------------------------------------------------------------------------- folders that cannot be written

def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


@pytest.fixture
def tmpfs(tmp_path):
    mounts: list[Path] = []

    def mount(name: str, size: str = "4m") -> Path:
        where = tmp_path / name
        _mount_tmpfs(where, size)
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_read_only_run_dir_is_one_line(tmpfs, tmp_path):
    ro = tmpfs("ro")
    (ro / "old").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    for target in (ro / "new", ro / "old"):
        code, out = run(*RUN, f"hydra.run.dir={target}", cwd=tmp_path)
        assert code == 2, out[-3000:]
        line = one_line(out, f"cannot write {target}")
        assert "read-only" in line and "hydra.run.dir=" in line
    assert sorted(p.name for p in ro.iterdir()) == ["old"] and not list((ro / "old").iterdir())


@pytest.mark.slow
def test_disk_full_mid_run_is_one_line_and_summary_never_says_running(tmpfs, tmp_path):
    """The disk fills while epoch 2 trains: the run stops with one line, summary.json does
    not say `running`, and epoch 1's checkpoint is intact and continues once there is room."""
    disk, flag = tmpfs("disk", "8m"), tmp_path / "paused"
    cmd = [*RUN, f"hydra.run.dir={disk / 'job'}"]
    proc = start(*cmd, cwd=tmp_path, env=paused_at("2:1", flag))
    wait_paused(proc, flag)
    with open(disk / "filler", "wb", buffering=0) as f:  # fill the disk for real, to the last byte
        for chunk in (b"\0" * 65536, b"\0"):
            try:
                while True:
                    f.write(chunk)
            except OSError:
                pass
    flag.unlink()
    code, out = finish(proc)
    job = disk / "job"
    assert code == 1, out[-3000:]
    line = one_line(out, "the disk is full")
    assert f"cannot write {job}" in line and "resume=" in line
    found = RunFolder(job, create=False).read_summary()
    assert found is None or found["status"] == "failed", found  # never "running"
    assert load_checkpoint(job)["epoch"] == 1

    (disk / "filler").unlink()  # room again: the same command continues from epoch 1
    code, out = run(*cmd, cwd=tmp_path)
    assert code == 0, out[-3000:]
    assert summary(job)["status"] == "completed" and len(metrics(job)) == 3


# --------------------------------------------------------------------------- one-line errors for resume / rerun


@pytest.mark.slow
def test_rerun_of_a_folder_whose_summary_is_not_json(ref, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(ref, damaged)
    (damaged / "summary.json").write_text('{"status": "comp')
    before = snapshot(damaged)
    code, out = run(str(damaged), cwd=tmp_path, module="optimlab.rerun")
    assert code == 2, out[-3000:]
    line = one_line(out, "is not valid JSON")
    assert str(damaged / "summary.json") in line and "nothing was run" in line
    assert snapshot(damaged) == before and not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_resume_of_a_sweep_folder_says_how_to_resume_a_sweep(tmp_path):
    """(A re-run of a sweep folder re-trains its best trial: test_rerun_sweep.py.)"""
    code, out = run("-m", *TINY, "data.image_size=8", "data.channels=1", "lr=0.01", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert code == 0, out[-3000:]
    sweep = tmp_path / "sweep"
    assert (sweep / "multirun.yaml").is_file()
    before = snapshot(sweep)
    code, out = run(f"resume={sweep}", cwd=tmp_path)
    assert code == 2, out[-3000:]
    line = one_line(out, "is a sweep folder")
    # the sweep's command as this process was started (python /…/train.py), or train.py's
    assert str(sweep) in line and re.search(r"run the same sweep command again \(python \S*train\.py -m", line)
    assert "lr=0.01" in line
    assert snapshot(sweep) == before


@pytest.mark.slow
def test_sgd_ignores_momentum_with_one_warning(tmp_path):
    code, out = run(*TINY, "data.image_size=8", "data.channels=1", "optimizer=sgd", "momentum=0.9", cwd=tmp_path)
    assert code == 0, out[-3000:]
    line = one_line(out, "momentum=0.9 is ignored")
    assert "optimizer=sgd" in line and "optimizer=momentum" in line
