"""Wall time of one 12-trial digits sweep: without vs with pruning, 1 vs 2 workers.

    uv run python bench/sweep_bench.py            # all four, in a temp folder
    uv run python bench/sweep_bench.py --epochs 4 --trials 12 --model lenet

Every variant runs the same command (same seed, same search space, same epochs per
trial) into a fresh study and prints the wall time and the best value it reached.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "no pruning, 1 worker": ["hydra/sweeper/pruner=none", "hydra.sweeper.n_workers=1"],
    "median pruning, 1 worker": ["hydra/sweeper/pruner=median", "hydra.sweeper.n_workers=1"],
    "no pruning, 2 workers": ["hydra/sweeper/pruner=none", "hydra.sweeper.n_workers=2"],
    "median pruning, 2 workers": ["hydra/sweeper/pruner=median", "hydra.sweeper.n_workers=2"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--only", nargs="*", help="variant names (default: all)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="optimlab-sweep-bench-"))
    rows = []
    for i, (name, extra) in enumerate(VARIANTS.items()):
        if args.only and name not in args.only:
            continue
        cmd = [
            "python", "train.py", "-m", "sweep=lr_momentum", "data=digits", f"model={args.model}",
            f"epochs={args.epochs}", "device=cpu", "quiet=true", "tensorboard=false", "plots=false",
            f"hydra.sweeper.n_trials={args.trials}", "hydra.sweeper.plots=false",
            f"hydra.sweeper.study_name=bench{i}", "hydra.sweeper.max_failures=null", *extra,
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *cmd[2:]], cwd=work,
                              capture_output=True, text=True)  # fmt: skip
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{name}: exit {proc.returncode}")
        results = yaml.safe_load((work / "multirun" / f"bench{i}" / "optimization_results.yaml").read_text())
        rows.append((name, wall, results["best_value"], results["trials"], shlex.join(cmd)))
        print(f"{name:28s} {wall:7.1f} s  best val_acc {results['best_value']:.4f}  {results['trials']}", flush=True)
    print()
    for name, wall, best, trials, cmd in rows:
        print(f"| {name} | {wall:.1f} | {best:.4f} | {trials} | `{cmd}` |")


if __name__ == "__main__":
    main()
