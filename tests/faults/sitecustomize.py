"""Fault injection for the tests (on PYTHONPATH only in the tests that want it).

``OPTIMLAB_KILL_AT=E`` or ``E:S`` makes the process SIGKILL itself just before training
step S (default 0) of epoch E (1-based): "3" = right after epoch 2 ended and was
checkpointed; "3:5" = in the middle of epoch 3. A real kill at an exact point, with no
hook in optimlab itself. ``OPTIMLAB_KILL_TRIAL=N``: only while the process runs sweep trial N.
"""

import os

_SPEC = os.environ.get("OPTIMLAB_KILL_AT")

if _SPEC:
    import signal

    from optimlab.engine.data import DeviceData

    _epoch_s, _, _step_s = _SPEC.partition(":")
    _KILL = (int(_epoch_s), int(_step_s or 0))
    _batches = DeviceData.train_batches

    def _train_batches(self, batch_size, seed, epoch):
        for step, batch in enumerate(_batches(self, batch_size, seed, epoch)):
            if (epoch + 1, step) == _KILL and _is_the_trial():
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch

    def _is_the_trial():
        import json

        wanted = os.environ.get("OPTIMLAB_KILL_TRIAL")
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
