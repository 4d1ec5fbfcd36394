"""Upstream sweeper vs optimlab's fast preset: wall time, best value and time-to-target,
interleaved per sampler seed, in one invocation.

    uv run python bench/sweep_bench.py                     # the default benchmark (5 seeds)
    uv run python bench/sweep_bench.py --seeds 0 1 --trials 8
    uv run python bench/sweep_bench.py --breakdown         # + where a trial's wall time goes
    uv run python bench/sweep_bench.py --random 30         # random search: does the search matter?
    uv run python bench/sweep_bench.py --task relucnn      # the second task (another model, harder)
    uv run python bench/sweep_bench.py --only optimlab --upstream-json up.json hydra.sweeper.n_workers=1
                                                           # a variant of the preset against a saved upstream side

For each seed, in turn:

- ``upstream``: ``hydra/sweeper=optuna`` as a user of hydra-optuna-sweeper gets it (TPE with
  its defaults, the basic launcher, ``n_jobs`` 2, torch's default threads), plus ``max_failure_rate=1.0`` (else the first
  diverged trial ends its sweep), the seed and ``direction=maximize``; its study stays in
  memory, as for its users: each trial's value and end come from its run folder.
- ``optimlab``: ``sweep=lr_momentum_fast`` with the same seed (and its own worker and thread
  layout: ``n_workers: auto``), plus any ``key=value`` given after the options (``extra``,
  the optimlab side only: a variant of the preset).

Both run the same ``train.py`` task (``TASKS[--task]``), the same search space (``SPACE``)
and the same trial budget (``--trials``); ``--threads N`` sets ``OMP_NUM_THREADS`` for both
(default: unset, each side's own default). A trial's end is the last write into its run
folder; a method's best-so-far at time t is the best COMPLETE value among the trials
finished by t (t from the start of the sweep's process). **Time-to-target**, the headline:
the first t at which the best-so-far reaches the target, which is the upstream side's
median best (over the seeds, each its own best of the sweep) less ``--tolerance`` (0.5 %),
one target for every seed. The plot (``--plot``) shows best-so-far vs wall time per
method: the median over seeds and the min–max band, and the target.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the tasks both sweepers run (--task). lenet: digits, 500 held-out validation images (a
# steadier objective and a smaller training split: the search matters, see --random), 9
# epochs. relucnn: another net (seed 004's ReLU CNN, padded convolutions) on 16×16 digits
# with 900 validation images, so it trains on 537 and is harder, for 6 epochs
TASKS = {
    "lenet": ["model=lenet", "optimizer=momentum", "data=digits", "data.val_size=500", "epochs=9", "device=cpu", "quiet=true"],
    "relucnn": ["model=relu_cnn", "optimizer=momentum", "data=digits", "data.image_size=16", "data.val_size=900",
                "epochs=6", "device=cpu", "quiet=true"],
}  # fmt: skip
TITLES = {"lenet": "digits, LeNet, 9 epochs", "relucnn": "16×16 digits, 537 training images, ReLU CNN, 6 epochs"}
TASK: list[str] = []  # the chosen task's overrides
OPTIMLAB_EXTRA: list[str] = []  # overrides of the optimlab side only (a variant of the preset)
SPACE = ["lr=tag(log, interval(1e-4, 0.1))", "momentum=interval(0.0, 0.95)"]
PRESET = ["lr_momentum_fast"]  # --preset


def methods(seed: int, trials: int, work: Path) -> dict[str, list[str]]:
    up, ol = f"upstream_{seed}", f"optimlab_{seed}"
    return {
        "upstream": [
            "hydra/sweeper=optuna", f"hydra.sweeper.sampler.seed={seed}", "hydra.sweeper.direction=maximize",
            f"hydra.sweeper.n_trials={trials}", "hydra.sweeper.max_failure_rate=1.0",
            f"hydra.sweeper.study_name={up}", f"hydra.sweep.dir={work / up}",
        ],
        "optimlab": [
            f"sweep={PRESET[0]}", f"hydra.sweeper.sampler.seed={seed}", f"hydra.sweeper.n_trials={trials}",
            "hydra.sweeper.max_failures=null", f"hydra.sweeper.study_name={ol}", f"hydra.sweep.dir={work / ol}",
            *OPTIMLAB_EXTRA,
        ],
    }  # fmt: skip




def trial_folder(sweep_dir: Path, number: int) -> Path | None:
    """optimlab names trial folders trial_0007; the upstream sweeper by job number (= trial number)."""
    return next((p for p in (sweep_dir / f"trial_{number:04d}", sweep_dir / str(number)) if p.is_dir()), None)


STATES = {"completed": "COMPLETE", "pruned": "PRUNED"}  # summary.json status -> study state (others: FAIL)


def study_rows(sweep_dir: Path, study: str) -> list[tuple]:
    """(number, state, completion time, value) of each trial in an optimlab study: its SQLite
    file (one worker) or journal file (several)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = sweep_dir / "optuna.journal"
    storage = (JournalStorage(JournalFileBackend(str(journal))) if journal.exists()
               else f"sqlite:///{sweep_dir / 'optuna.db'}")  # fmt: skip
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    return [(t.number, t.state.name, t.datetime_complete, t.values[0] if t.values else None, t.user_attrs.get("worker", 0))
            for t in trials]  # fmt: skip


def folder_rows(sweep_dir: Path) -> list[tuple]:
    """The same from the trial folders' summary.json: the upstream sweeper keeps its study in
    memory (what its users get) and writes only the best to optimization_results.yaml."""
    rows = []
    for folder in sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        summary = folder / "summary.json"
        s = json.loads(summary.read_text()) if summary.is_file() else {}
        state = STATES.get(s.get("status"), "FAIL")
        rows.append((int(folder.name), state, None, (s.get("objective") or {}).get("value") if state == "COMPLETE" else None, 0))
    return rows


def read_trials(method: str, sweep_dir: Path, study: str) -> list[dict]:
    """Every trial of a sweep: number, state, value, end (epoch seconds), epochs trained.

    A trial's end is the last write into its run folder (summary.json, the final plots),
    on both sides: the study's own completion time would be late for the upstream
    sweeper, which asks and tells ``n_jobs`` trials at a time."""
    rows = folder_rows(sweep_dir) if method == "upstream" else study_rows(sweep_dir, study)
    out = []
    for n, state, complete, value, worker in rows:
        folder = trial_folder(sweep_dir, n)
        files = [f for f in folder.rglob("*") if f.is_file() and f.name != ".lock"] if folder else []
        end = max((f.stat().st_mtime for f in files), default=None)
        if end is None and complete:  # Optuna stores naive local times (datetime.now())
            end = complete.timestamp()
        metrics = folder / "metrics.csv" if folder else None
        epochs = len(metrics.read_text().strip().splitlines()) - 1 if metrics and metrics.is_file() else 0
        summary = folder / "summary.json" if folder else None
        durations = (json.loads(summary.read_text()).get("durations") or {}) if summary and summary.is_file() else {}
        out.append({"number": n, "state": state, "end": end, "value": value, "epochs": epochs, "folder": folder,
                    "worker": worker, "durations": durations, "train_s": durations.get("train_s", 0.0)})  # fmt: skip
    return out


def best_so_far(trials: list[dict], t0: float) -> list[tuple[float, float]]:
    """(seconds since t0, best COMPLETE value so far) at each improvement."""
    out, best = [], -math.inf
    for t in sorted((t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None), key=lambda t: t["end"]):
        if t["value"] > best:
            best = t["value"]
            out.append((t["end"] - t0, best))
    return out


def time_to(curve: list[tuple[float, float]], target: float) -> float:
    return next((s for s, v in curve if v >= target), math.inf)


THREADS: dict[str, str] = {}  # --threads: the same OMP_NUM_THREADS for both methods


def child_env() -> dict[str, str]:
    # Python writes the bytecode of what it imports (as on a usual install): with
    # PYTHONDONTWRITEBYTECODE=1 and an environment installed without bytecode (uv's default),
    # every process would compile torch, optuna, hydra... from source again
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **THREADS}


def run_one(cmd: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=child_env())
    return t0, time.time() - t0, proc


def counts(trials: list[dict]) -> str:
    found: dict[str, int] = {}
    for t in trials:
        found[t["state"]] = found.get(t["state"], 0) + 1
    return " ".join(f"{n} {s}" for s, n in sorted(found.items()))


def epochs_by(result: dict, target: float) -> int | str:
    """Epochs of the trials that had ended when ``result``'s sweep first reached ``target``."""
    t = time_to(result["curve"], target)
    if not math.isfinite(t):
        return "—"
    ends = [(tr["end"], tr["epochs"]) for tr in result["trials"] if tr["end"] is not None]
    start = min(e for e, _ in ends) - result["first_end"]  # the sweep's start, as an epoch time
    return sum(ep for e, ep in ends if e - start <= t + 1e-6)


def ttt_ratio(mine: float, theirs: float) -> float:
    """optimlab's time-to-target over upstream's: 0 when only optimlab reached it, inf when
    only upstream did, nan when neither did."""
    if math.isinf(mine) and math.isinf(theirs):
        return math.nan
    return 0.0 if math.isinf(theirs) else mine / theirs


def fmt_r(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.2f}"


def fmt_s(x: float) -> str:
    return "not reached" if not math.isfinite(x) else f"{x:.1f}"


# --------------------------------------------------------------------------- breakdown


def breakdown(trials: list[dict], t0: float) -> dict:
    """Median seconds per trial of each part of a trial's wall time: the durations its
    summary.json records, and what lies outside the run (Hydra's job set-up, the sampler,
    the storage, the end-of-run plots): the time since the previous trial ended (the
    process start, for the first) minus the run's total_s."""
    parts: dict[str, list[float]] = {}
    first: dict[str, float] = {}
    prev = t0
    for t in sorted((t for t in trials if t["end"] is not None), key=lambda t: t["end"]):
        d = t["durations"]  # as read_trials read them from the trial's summary.json
        row = {k: v for k, v in d.items() if isinstance(v, (int, float))}
        row["trial wall (previous trial's end → this end)"] = t["end"] - prev
        row["outside the run (Hydra job, sampler, storage, end plots)"] = t["end"] - prev - d.get("total_s", 0.0)
        prev = t["end"]
        if not first:
            first = row
        for k, v in row.items():
            parts.setdefault(k, []).append(v)
    return {"median": {k: statistics.median(v) for k, v in parts.items()}, "first": first, "n": len(trials)}


def print_breakdown(name: str, b: dict) -> None:
    print(f"\n{name}: seconds per trial, median of {b['n']} trials (first trial)")
    for k, v in b["median"].items():
        print(f"  {k:48s} {v:7.3f}   ({b['first'].get(k, math.nan):.3f})")


# --------------------------------------------------------------------------- plot


def plot(curves: dict[str, list[list[tuple[float, float]]]], walls: dict[str, list[float]], path: Path, title: str,
         target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    horizon = max(max(w) for w in walls.values())
    grid = np.linspace(0, horizon, 400)
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    colors = {"upstream": "tab:orange", "optimlab": "tab:blue"}
    styles = {"upstream": "--", "optimlab": "-"}
    for method, runs in curves.items():
        ys = np.full((len(runs), len(grid)), np.nan)
        for i, curve in enumerate(runs):
            for s, v in curve:
                ys[i, grid >= s] = v
            ys[i, grid > walls[method][i]] = np.nan if not curve else ys[i, grid <= walls[method][i]][-1]
        have = np.all(~np.isnan(ys), axis=0)  # the median once every seed has a COMPLETE trial
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                med, lo, hi = np.nanmedian(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
        c = colors.get(method)
        ax.plot(grid[have], med[have], color=c, ls=styles.get(method, "-"), lw=2, label=f"{method}: median of {len(runs)} seeds")
        ax.fill_between(grid, lo, hi, where=~np.isnan(lo), color=c, alpha=0.15, label=f"{method}: min–max over seeds")
        ax.axvline(statistics.median(walls[method]), color=c, ls=":", lw=1.2)
    ax.axhline(target, color="gray", ls="-.", lw=1, label=f"target {target:.4f}")
    finals = [v for runs in curves.values() for curve in runs for _, v in curve[-1:]]
    if finals:
        ax.set_ylim(max(min(finals) - 0.06, 0), min(max(finals) + 0.01, 1.0))
    ax.set_xlabel("wall time since the sweep's process started (s); dotted: median end of the sweep")
    ax.set_ylabel("best val_acc so far (COMPLETE trials)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- random search


def random_search(n: int, work: Path) -> None:
    """n random trials over SPACE on TASK (no pruning): how many land within 1 % of the best."""
    cmd = [
        sys.executable, str(ROOT / "train.py"), "-m", "hydra/sweeper=optimlab", "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=0", "hydra/sweeper/pruner=none", f"hydra.sweeper.n_trials={n}",
        "hydra.sweeper.max_failures=null", "hydra.sweeper.plots=false", "hydra.sweeper.study_name=random",
        f"hydra.sweep.dir={work / 'random'}", "tensorboard=false", "plots=false", *TASK, *SPACE,
    ]  # fmt: skip
    _, wall, proc = run_one(cmd, work)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"random search: exit {proc.returncode}")
    trials = read_trials("optimlab", work / "random", "random")
    values = sorted((t["value"] for t in trials if t["state"] == "COMPLETE"), reverse=True)
    best = values[0]
    print(f"random search, {len(trials)} trials ({counts(trials)}), {wall:.0f} s: best {best:.4f}")
    print("| within | trials | share |\n|---|---|---|")
    for tol in (0.005, 0.01, 0.02, 0.05):
        k = sum(v >= best * (1 - tol) for v in values)
        print(f"| {tol:.1%} of the best | {k} | {k / len(trials):.0%} |")
    print("values:", " ".join(f"{v:.3f}" for v in values))


# --------------------------------------------------------------------------- worker layout


def layout(work: Path, rounds: int = 3) -> None:
    """Training speed of the task's trial (one lr, momentum) as a sweep can lay it out on
    this machine: one process with torch's default threads, one with OMP_NUM_THREADS=1, and
    as many one-thread processes at once as there are cores (what ``n_workers: auto`` starts).
    Images per second over all processes, from each run's own steps time; rounds interleaved."""
    from optimlab.sweeping.workers import cores as usable_cores  # the count n_workers: auto uses

    cores = usable_cores()
    base = [sys.executable, str(ROOT / "train.py"), *TASK, "lr=0.03", "momentum=0.8", "plots=false", "tensorboard=false"]
    env = {k: v for k, v in child_env().items() if k != "OMP_NUM_THREADS"}
    layouts = {f"1 process, torch's {cores} threads": (1, {}), "1 process, 1 thread": (1, {"OMP_NUM_THREADS": "1"}),
               f"{cores} processes, 1 thread each": (cores, {"OMP_NUM_THREADS": "1"})}  # fmt: skip
    rates: dict[str, list[float]] = {k: [] for k in layouts}
    for r in range(rounds):
        for name, (n, extra) in layouts.items():
            dirs = [work / "layout" / f"round{r}_{list(layouts).index(name)}_{i}" for i in range(n)]
            procs = [subprocess.Popen([*base, f"hydra.run.dir={d}"], env={**env, **extra}, cwd=work,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for d in dirs]  # fmt: skip
            for p in procs:
                p.wait()
            rate = 0.0
            for d in dirs:
                summary = json.loads((d / "summary.json").read_text())
                rate += summary["epochs_completed"] * train_images(d) / summary["durations"]["steps_s"]
            rates[name].append(rate)
            print(f"round {r} {name:32s} {rate:8.0f} images/s", flush=True)
    print("\n| layout | training images/s, all processes (median of rounds) | vs 1 process, default threads |\n|---|---|---|")
    first = statistics.median(next(iter(rates.values())))
    for name, rs in rates.items():
        print(f"| {name} | {statistics.median(rs):.0f} | {statistics.median(rs) / first:.2f}× |")


def train_images(run_dir: Path) -> int:
    """Training images per epoch of a run, from the first line its runner logged."""
    text = (run_dir / "train.log").read_text() if (run_dir / "train.log").is_file() else ""
    for line in text.splitlines():
        if " train, " in line:
            return int(line.split(" train, ")[0].rsplit(" ", 1)[-1])
    raise SystemExit(f"no training-set size in {run_dir}/train.log")


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--trials", type=int, default=16, help="trial budget of each sweep")
    ap.add_argument("--tolerance", type=float, default=0.005, help="time-to-target: within this share of the best")
    ap.add_argument("--only", choices=["upstream", "optimlab"], nargs="+", default=["upstream", "optimlab"])
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "sweep_time_to_target.png", help="'' for none")
    ap.add_argument("--breakdown", action="store_true", help="print where a trial's wall time goes, per method")
    ap.add_argument("--layout", action="store_true", help="only the worker-layout check: 1 process × default "
                    "threads vs cores × 1-thread processes, training images/s")
    ap.add_argument("--random", type=int, metavar="N", help="only a random search of N trials over the space")
    ap.add_argument("--work", type=Path, help="work folder (default: a new temp folder)")
    ap.add_argument("--json", type=Path, help="write every trial's times and values here")
    ap.add_argument("--from-json", type=Path, help="print the tables and draw the plot of a run saved with --json")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up sweep of each method")
    ap.add_argument("--threads", default="", help="OMP_NUM_THREADS of both methods' processes (default: unset, "
                    "each side's own: torch's default upstream, the preset's worker layout in optimlab; 1: steadier "
                    "on a CPU shared with other work, where 2-thread OpenMP barriers stall)")
    ap.add_argument("--preset", default=PRESET[0], help="the optimlab side's sweep= preset")
    ap.add_argument("--task", choices=sorted(TASKS), default="lenet", help="the task both sides sweep")
    ap.add_argument("--upstream-json", type=Path, help="with --only optimlab: the upstream side of a run saved with "
                    "--json (a variant of the preset against it; the headline comes from one interleaved run)")
    ap.add_argument("extra", nargs="*", help="train.py overrides of the optimlab side only, e.g. hydra.sweeper.n_workers=1")
    args = ap.parse_args()
    TASK.extend(TASKS[args.task])
    OPTIMLAB_EXTRA.extend(args.extra)
    PRESET[0] = args.preset
    if args.plot == ap.get_default("plot") and args.task != "lenet":
        args.plot = ROOT / "docs" / f"sweep_time_to_target_{args.task}.png"
    if args.threads:
        THREADS["OMP_NUM_THREADS"] = args.threads
    work = (args.work or Path(tempfile.mkdtemp(prefix="optimlab-sweep-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    with open("/proc/loadavg") if os.path.exists("/proc/loadavg") else open(os.devnull) as f:
        load = f.read().split()[:3]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {' '.join(load)}, work {work}")
    print("task:", shlex.join([*TASK, *SPACE]), "|", " ".join(f"{k}={v}" for k, v in THREADS.items()), flush=True)
    if args.random:
        return random_search(args.random, work)
    if args.layout:
        return layout(work)

    if args.from_json:  # the tables and the plot again, from a saved run
        results = json.loads(args.from_json.read_text())
        args.trials = len(results["upstream"][0]["trials"])
        return summarize(results, args)
    if not args.no_warmup:  # untimed: bytecode written, files in the page cache, for both methods alike
        for method, extra in methods(10_000, 2, work / "warmup").items():
            if method not in args.only:
                continue
            _, wall, proc = run_one([sys.executable, str(ROOT / "train.py"), "-m", *extra, *TASK, *SPACE, "epochs=1"], work)
            print(f"warm-up {method}: {wall:.1f} s (exit {proc.returncode})", flush=True)
    results: dict[str, list[dict]] = {m: [] for m in args.only}
    for seed in args.seeds:
        for method, extra in methods(seed, args.trials, work).items():
            if method not in args.only:
                continue
            cmd = [sys.executable, str(ROOT / "train.py"), "-m", *extra, *TASK, *SPACE]
            t0, wall, proc = run_one(cmd, work)
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{method} seed {seed}: exit {proc.returncode}\n{shlex.join(cmd)}")
            name = f"{method}_{seed}"
            trials = read_trials(method, work / name, name)
            curve = best_so_far(trials, t0)
            ends = [t["end"] for t in trials if t["end"] is not None]
            r = {"seed": seed, "wall": wall, "best": curve[-1][1] if curve else math.nan, "curve": curve,
                 "first_end": min(ends) - t0 if ends else math.nan, "after_last": t0 + wall - max(ends) if ends else math.nan,
                 "epochs": sum(t["epochs"] for t in trials), "cmd": shlex.join(cmd[1:]),
                 "workers": len({t["worker"] for t in trials}) or 1,
                 "train_share": sum(t["train_s"] for t in trials) / (wall * (len({t["worker"] for t in trials}) or 1)),
                 "trials": [{k: v for k, v in t.items() if k != "folder"} for t in trials]}  # fmt: skip
            results[method].append(r)
            print(f"seed {seed} {method:9s} {wall:7.1f} s  best {r['best']:.4f}  epochs trained {r['epochs']:3d}  "
                  f"first trial done at {r['first_end']:.1f} s, after the last {r['after_last']:.1f} s  "
                  f"{r['workers']} worker(s), {r['train_share']:.0%} of their time in epochs  "
                  f"trials: {counts(trials)}", flush=True)  # fmt: skip
            if args.breakdown:
                print_breakdown(f"seed {seed} {method}", breakdown(trials, t0))

    if args.upstream_json:
        results["upstream"] = json.loads(args.upstream_json.read_text())["upstream"]
    if len(results) == 2:
        summarize(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def summarize(results: dict[str, list[dict]], args) -> None:
    up, ol = results["upstream"], results["optimlab"]

    def med(xs):  # a target never reached counts as later than any time (inf); nan: neither reached
        xs = [x for x in xs if not math.isnan(x)]
        return statistics.median(sorted(xs)) if xs else math.nan

    # one target for every seed: the upstream side's median best, less the tolerance
    target = med([u["best"] for u in up]) * (1 - args.tolerance)
    print(f"\ntarget: {target:.4f} = upstream's median best {med([u['best'] for u in up]):.4f} less {args.tolerance:.1%}")
    print("\n| seed | upstream time-to-target s | optimlab time-to-target s | **ttt ratio** | upstream best | "
          "optimlab best | upstream s | optimlab s | wall ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios, ttt_ratios, ttts = [], [], {"upstream": [], "optimlab": []}
    for u, o in zip(up, ol):
        tu, to = time_to(u["curve"], target), time_to(o["curve"], target)
        ratio, tr = o["wall"] / u["wall"], ttt_ratio(to, tu)
        ratios.append(ratio)
        ttt_ratios.append(tr)
        ttts["upstream"].append(tu)
        ttts["optimlab"].append(to)
        print(f"| {u['seed']} | {fmt_s(tu)} | {fmt_s(to)} | {fmt_r(tr)} | {u['best']:.4f} | {o['best']:.4f} | "
              f"{u['wall']:.1f} | {o['wall']:.1f} | {ratio:.2f} |")  # fmt: skip
    print(f"| **median** | {fmt_s(med(ttts['upstream']))} | {fmt_s(med(ttts['optimlab']))} | **{fmt_r(med(ttt_ratios))}** | "
          f"{med([u['best'] for u in up]):.4f} | {med([o['best'] for o in ol]):.4f} | {med([u['wall'] for u in up]):.1f} | "
          f"{med([o['wall'] for o in ol]):.1f} | {med(ratios):.2f} |")  # fmt: skip
    # load-free: the epochs each side had trained when it first reached the target
    print("\nepochs trained by the time the target was reached (all trials ended by then), per seed: "
          + "; ".join(f"{m} " + " ".join(str(epochs_by(r, target)) for r in rs) for m, rs in results.items()))
    reached = sum(math.isfinite(t) for t in ttts["optimlab"])
    up_reached = sum(math.isfinite(t) for t in ttts["upstream"])
    print(f"\nmedian time-to-target ratio {fmt_r(med(ttt_ratios))} (target {target:.4f}; optimlab reached it in "
          f"{reached}/{len(ol)} seeds, upstream in {up_reached}/{len(up)}); median best: upstream "
          f"{med([u['best'] for u in up]):.4f}, optimlab {med([o['best'] for o in ol]):.4f}; median wall-time ratio "
          f"{med(ratios):.2f}; epochs trained, median: upstream {med([u['epochs'] for u in up])}, optimlab "
          f"{med([o['epochs'] for o in ol])}")  # fmt: skip
    for m, rs in results.items():
        print(f"{m}: median first trial done at {med([r['first_end'] for r in rs]):.1f} s; median time after the "
              f"last trial (summary, plots, exit) {med([r['after_last'] for r in rs]):.1f} s; share of each worker's "
              f"time in epochs (training and validation), median {med([r.get('train_share', math.nan) for r in rs]):.0%}")  # fmt: skip
    if args.plot and str(args.plot) not in ("", "."):  # --plot '': no plot
        title = (f"{len(up)} seeds, {args.trials} trials each: {TITLES[args.task]}, lr × momentum\n"
                 f"median time-to-target ratio {fmt_r(med(ttt_ratios))} (target {target:.4f}), "
                 f"median wall-time ratio {med(ratios):.2f}")  # fmt: skip
        plot({m: [r["curve"] for r in rs] for m, rs in results.items()},
             {m: [r["wall"] for r in rs] for m, rs in results.items()}, args.plot, title, target)  # fmt: skip
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
