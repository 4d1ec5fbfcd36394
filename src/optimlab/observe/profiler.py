"""debug=profile: a torch.profiler trace of a few training steps, written into the run folder.

The trace is Chrome's trace-event JSON: open it in https://ui.perfetto.dev or
chrome://tracing (or TensorBoard's profile plugin). ``profile.warmup`` steps run under the
profiler untraced (its own start-up cost), then ``profile.steps`` are traced; the trace is
written as soon as they are done (or at the end of the run, if the run has fewer steps).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class StepProfiler:
    """Training callback: starts torch.profiler when built, steps it after every training
    step, and exports the trace to ``trace_path`` after ``warmup + steps`` steps."""

    def __init__(self, trace_path: str | Path, steps: int = 5, warmup: int = 1, memory: bool = False, shapes: bool = False):
        import torch
        from torch.profiler import ProfilerActivity, profile, schedule

        self.path = Path(trace_path)
        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        self.active, self.steps, self.done = int(steps), int(warmup) + int(steps), 0
        self.profiler = profile(
            activities=activities, schedule=schedule(wait=0, warmup=int(warmup), active=int(steps), repeat=1),
            on_trace_ready=self._export, record_shapes=shapes, profile_memory=memory,
        )  # fmt: skip
        self.profiler.start()
        self.running = True

    def _export(self, prof) -> None:
        prof.export_chrome_trace(str(self.path))
        log.info("profile: a trace of training steps %d-%d in %s", self.steps - self.active + 1, self.steps, self.path)

    def _stop(self) -> None:
        if self.running:
            self.running = False
            self.profiler.stop()  # exports the trace if the active steps had begun

    def on_batch_end(self, state: Any, step: int, n_steps: int, losses: Any) -> None:
        if not self.running:
            return
        self.done += 1
        self.profiler.step()
        if self.done >= self.steps:
            self._stop()

    def on_epoch_end(self, result: Any, state: Any) -> None:
        pass

    def on_run_end(self, summary: dict[str, Any]) -> None:
        self._stop()
