"""Fault injection for the tests (on PYTHONPATH only in the tests that want it): kills, pauses,
hangs at exact training steps, and packages that cannot be imported.

``OPTIMLAB_KILL_AT=E`` or ``E:S`` makes the process SIGKILL itself just before training
step S (default 0) of epoch E (1-based): "3" = right after epoch 2 ended and was
checkpointed; "3:5" = in the middle of epoch 3. A real kill at an exact point, with no
hook in optimlab itself. ``OPTIMLAB_KILL_TRIAL=N``: only while the process runs sweep trial N.

``OPTIMLAB_PAUSE_AT=E[:S]`` with ``OPTIMLAB_PAUSE_FILE=<path>`` pauses the run at the same
kind of point instead: it writes its pid to ``<path>`` and waits there until the file is
removed (or a signal arrives), so a test can act on a run at a known step — send SIGTERM
mid-epoch, start a second run into the same folder — without a timing race.
``OPTIMLAB_PAUSE_TRIAL=N``: only while the process runs sweep trial N.
"""

import os


def _point(spec):
    epoch_s, _, step_s = spec.partition(":")
    return int(epoch_s), int(step_s or 0)


_KILL = _point(os.environ["OPTIMLAB_KILL_AT"]) if os.environ.get("OPTIMLAB_KILL_AT") else None
_PAUSE = _point(os.environ["OPTIMLAB_PAUSE_AT"]) if os.environ.get("OPTIMLAB_PAUSE_AT") else None

if _KILL or _PAUSE:
    import signal
    import time

    from optimlab.engine.data import DeviceData

    _batches = DeviceData.train_batches

    def _pause() -> None:
        path = os.environ["OPTIMLAB_PAUSE_FILE"]
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(path + ".tmp", path)  # the test sees the whole pid or nothing
        while os.path.exists(path):
            time.sleep(0.02)

    def _train_batches(self, batch_size, seed, epoch):
        for step, batch in enumerate(_batches(self, batch_size, seed, epoch)):
            if (epoch + 1, step) == _KILL and _is_the_trial("OPTIMLAB_KILL_TRIAL"):
                os.kill(os.getpid(), signal.SIGKILL)
            if (epoch + 1, step) == _PAUSE and _is_the_trial("OPTIMLAB_PAUSE_TRIAL"):
                _pause()
            yield batch

    def _is_the_trial(variable):
        import json

        wanted = os.environ.get(variable)
        return wanted is None or json.loads(os.environ.get("OPTIMLAB_TRIAL", "{}")).get("number") == int(wanted)

    DeviceData.train_batches = _train_batches

# ``OPTIMLAB_HANG_AT=E``: the process waits (for a signal) just before the first training
# step of epoch E, i.e. right after epoch E-1 was written: a trial caught mid-run for sure.
_HANG = os.environ.get("OPTIMLAB_HANG_AT")

if _HANG:
    import time

    from optimlab.engine.data import DeviceData

    _hang_epoch = int(_HANG)
    _batches_to_hang = DeviceData.train_batches

    def _hanging_batches(self, batch_size, seed, epoch):
        if epoch + 1 == _hang_epoch:
            while True:
                time.sleep(0.1)
        yield from _batches_to_hang(self, batch_size, seed, epoch)

    DeviceData.train_batches = _hanging_batches

# ``OPTIMLAB_BLOCK_IMPORT=wandb,mlflow``: those packages (and their submodules) cannot be
# imported, as in an environment where they were never installed; a dotted name
# (``hydra_plugins.hydra_ray_launcher``) blocks that module and its submodules only.
_BLOCKED = tuple(m for m in os.environ.get("OPTIMLAB_BLOCK_IMPORT", "").split(",") if m)

if _BLOCKED:
    import sys

    class _Blocker:
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in _BLOCKED):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _Blocker())
