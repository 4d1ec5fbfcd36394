"""Process start → first training step of `python train.py`, median of several runs, with the breakdown.

    uv run python bench/overhead.py                          # 5 runs of train.py data=synthetic device=cpu
    uv run python bench/overhead.py runs=7 -- model=fastnet  # arguments after -- go to train.py

Each run is a fresh process of the virtual environment's python running train.py unchanged,
through a thin wrapper (this file, ``--child``) that only records clock stamps at phase
boundaries (``time.time()``, against the parent's stamp taken right before the process is
started) and leaves the process once the first training step is done:

  interpreter + hydra/optimlab.cli imports → Hydra compose (config, run dir, logging) →
  torch + optimlab imports → run setup and data load → placement on the device →
  model/optimizer/loggers up to the first batch → first training step.

`uv run` itself adds its own start-up on top (measured once as `uv run python -c pass`).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ARGS = ["data=synthetic", "device=cpu", "epochs=1"]
PHASES = [
    ("cli_imported", "interpreter + imports of train.py (hydra, optimlab.cli)"),
    ("composed", "Hydra: compose config, run dir, logging, plugins"),
    ("runner_imported", "torch + optimlab.run.runner imports"),
    ("data_loaded", "run setup (summary, env, git) + dataset load"),
    ("data_placed", "DeviceData: on the device, normalisation stats"),
    ("first_batch", "model, optimizer, loggers, first batch"),
    ("first_step", "first training step (forward, backward, step)"),
]


# --------------------------------------------------------------------------- child: train.py with stamps


def child(argv: list[str]) -> None:
    t0 = float(os.environ["OPTIMLAB_BENCH_T0"])
    stamps: dict[str, float] = {}

    def stamp(name: str) -> None:
        stamps.setdefault(name, time.time() - t0)

    def finish() -> None:
        sys.stdout.flush()
        os.write(int(os.environ["OPTIMLAB_BENCH_FD"]), json.dumps(stamps).encode())
        os._exit(0)  # the first step is what we time: skip the rest of the run

    sys.path.insert(0, str(ROOT / "src"))
    import optimlab.cli as cli

    stamp("cli_imported")
    validate = cli.validate

    def validate_and_hook(cfg) -> None:
        stamp("composed")
        validate(cfg)
        from optimlab.engine import data as datasets
        from optimlab.run import runner  # noqa: F401  (what cli.main imports next anyway)

        stamp("runner_imported")
        load, place, batches = datasets.load, datasets.DeviceData.__init__, datasets.DeviceData.train_batches

        def loaded(*a, **k):
            out = load(*a, **k)
            stamp("data_loaded")
            return out

        def placed(self, *a, **k):
            place(self, *a, **k)
            stamp("data_placed")

        def train_batches(self, *a, **k):
            for i, batch in enumerate(batches(self, *a, **k)):
                if i == 0:
                    stamp("first_batch")
                else:
                    stamp("first_step")
                    finish()
                yield batch
            stamp("first_step")
            finish()

        datasets.load = loaded
        datasets.DeviceData.__init__ = placed
        datasets.DeviceData.train_batches = train_batches
        del runner

    cli.validate = validate_and_hook
    sys.argv = [str(ROOT / "train.py"), *argv]
    cli.main()
    finish()


# --------------------------------------------------------------------------- parent


def one_run(train_args: list[str], cwd: Path) -> dict[str, float]:
    read, write = os.pipe()
    env = {**os.environ, "OPTIMLAB_BENCH_FD": str(write)}
    env["OPTIMLAB_BENCH_T0"] = repr(time.time())
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *train_args],
        cwd=cwd,
        env=env,
        pass_fds=(write,),
        capture_output=True,
        text=True,
    )
    os.close(write)
    with os.fdopen(read) as f:
        raw = f.read()
    if proc.returncode != 0 or not raw:
        raise SystemExit(f"train.py failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(raw)


def median_seconds(cmd: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str]) -> None:
    runs = 5
    train_args = list(TRAIN_ARGS)
    if "--" in argv:
        i = argv.index("--")
        argv, train_args = argv[:i], train_args + argv[i + 1 :]
    for arg in argv:
        key, _, value = arg.partition("=")
        if key != "runs":
            raise SystemExit(f"unknown argument {arg!r}: runs=N [-- train.py overrides]")
        runs = int(value)

    import torch  # only for the header

    print(f"# optimlab start-up overhead  {time.strftime('%Y-%m-%dT%H:%M:%S')}")
    print(f"# command: uv run python bench/overhead.py {' '.join(argv)}".rstrip())
    print(f"# train.py {' '.join(train_args)}   ({runs} runs, median; torch {torch.__version__})")
    print(f"# load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = []
    work = Path(tempfile.mkdtemp(prefix="optimlab-overhead-"))
    try:
        for _ in range(runs):
            results.append(one_run(train_args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'phase':<58}{'median s':>9}   per run")
    previous = [0.0] * runs
    for key, label in PHASES:
        ends = [r.get(key, prev) for r, prev in zip(results, previous)]
        deltas = [e - p for e, p in zip(ends, previous)]
        print(f"{label:<58}{statistics.median(deltas):>9.2f}   {' '.join(f'{d:.2f}' for d in deltas)}")
        previous = ends
    starts = [r["first_batch"] for r in results]
    total = [r["first_step"] for r in results]
    print(f"{'process start → first training step begins':<58}{statistics.median(starts):>9.2f}")
    print(f"{'process start → first training step done':<58}{statistics.median(total):>9.2f}   (target <= 3 s)")

    print()
    print("for reference (median of 3):")
    print(f"  python -c pass                 {median_seconds([sys.executable, '-c', 'pass'], 3):.2f} s")
    print(f"  python -c 'import torch'       {median_seconds([sys.executable, '-c', 'import torch'], 3):.2f} s")
    uv = shutil.which("uv")
    if uv:
        print(f"  uv run python -c pass          {median_seconds([uv, 'run', 'python', '-c', 'pass'], 3):.2f} s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        main(sys.argv[1:])
