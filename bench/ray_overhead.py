"""What running each trial as a Ray task costs: the same N-trial, 1-epoch sweep with Hydra's
basic launcher (trials in the sweep's process) and with ``hydra/launcher=ray`` (a local Ray
instance started by the sweep), interleaved, several rounds.

    uv run --extra ray python bench/ray_overhead.py                 # 4 trials a sweep, 2 rounds
    uv run --extra ray python bench/ray_overhead.py trials=6 rounds=3

Per trial: its wall time in the study (``datetime_complete - datetime_start``: the launcher
call, the job and its training). Per sweep: the command's wall time (process start, Ray's
start-up, every trial, the summary). Printed: medians of each, per launcher, and the
differences.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli_args import key_values  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["-m", "hydra/sweeper=optimlab", "data=synthetic", "data.train_size=256", "data.val_size=64",
         "data.test_size=64", "batch_size=32", "epochs=1", "lr=interval(0.01,0.1)", "device=cpu",
         "tensorboard=false", "quiet=true", "plots=false", "hydra.sweeper.plots=false"]  # fmt: skip
LAUNCHERS = {"basic": [], "ray": ["hydra/launcher=ray", "+hydra.launcher.ray.remote.num_cpus=1"]}


def one_sweep(launcher: str, trials: int, folder: Path) -> tuple[float, list[float]]:
    """(the command's wall time, each trial's wall time) of one sweep."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *SWEEP, *LAUNCHERS[launcher],
                           f"hydra.sweeper.n_trials={trials}", "hydra.sweep.dir=multirun/s"],
                          cwd=folder, capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{launcher}: the sweep failed:\n{done.stderr[-2000:]}")
    study = optuna.load_study(study_name="optimlab", storage=f"sqlite:///{folder}/multirun/s/optuna.db")
    return wall, [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials]


def main() -> None:
    args, _ = key_values(sys.argv[1:], {"trials": 4, "rounds": 2})
    walls: dict[str, list[float]] = {k: [] for k in LAUNCHERS}
    per_trial: dict[str, list[float]] = {k: [] for k in LAUNCHERS}
    firsts: dict[str, list[float]] = {k: [] for k in LAUNCHERS}
    for r in range(args["rounds"]):
        for launcher in LAUNCHERS:  # interleaved: a load change hits both alike
            with tempfile.TemporaryDirectory() as tmp:
                wall, trials = one_sweep(launcher, args["trials"], Path(tmp))
            walls[launcher].append(wall)
            firsts[launcher].append(trials[0])
            per_trial[launcher].extend(trials[1:])
            print(f"round {r + 1} {launcher:5s}: sweep {wall:6.2f} s, trials " + " ".join(f"{t:.2f}" for t in trials))
    med = {k: (statistics.median(walls[k]), statistics.median(firsts[k]), statistics.median(per_trial[k])) for k in LAUNCHERS}
    print(f"\n{'launcher':8s} {'sweep wall':>11s} {'first trial':>12s} {'later trials':>13s}   (medians, s)")
    for k, (w, f, t) in med.items():
        print(f"{k:8s} {w:11.2f} {f:12.2f} {t:13.2f}")
    (bw, bf, bt), (rw, rf, rt) = med["basic"], med["ray"]
    print(f"\nray - basic: sweep {rw - bw:+.2f} s, first trial {rf - bf:+.2f} s, each later trial {rt - bt:+.2f} s "
          f"({rt / bt:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
