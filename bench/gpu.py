"""The GPU figures in one command: training speed against a bf16 matmul ceiling, packed
trials, a packed against an unpacked sweep, and the memory each pack takes.

    bash bench/gpu.sh                                   # on a GPU machine (≤ 8 minutes); appends to bench/RESULTS.md
    bash bench/gpu.sh quick=true out=/tmp/gpu.md        # the same code paths on CPU, tiny sizes, well under a minute
    uv run python bench/gpu.py device=cuda ks=1,8,32,64 sweep_trials=64

Measured in this one run, each figure printed in ONE markdown table:

  - the bf16 matmul ceiling: a timed n×n×n bf16 ``torch.matmul`` on the device (median of 5);
  - training images/s of the seeds' CNN (TuduiCNN) and of FastNet through optimlab's engine
    (bench/throughput.py's ``engine_contestant``: device-resident data, crop+flip,
    channels_last, bf16 autocast and torch.compile on CUDA), the median of ``rounds`` windows;
    with the model's forward+backward FLOPs per image (``torch.utils.flop_counter``) this
    gives the achieved TFLOP/s and its share of the ceiling;
  - bench/pack_bench.py at K = 1, 8, 32 (TuduiCNN, CIFAR shape): (a) the K trials one after
    another, (c) packed with ``engine.packed.fit_packed``, in trials/hour, and c/a;
  - a real sweep of ``sweep_trials`` trials (``train.py -m`` in a subprocess, lr × momentum,
    no pruner, ``epochs`` tiny) with ``hydra.sweeper.pack=<the largest K>`` and with
    ``pack=1``, each timed from the process's start to its end, in trials/hour;
  - memory: ``torch.cuda.max_memory_allocated`` during each pack size's packed run, and the
    device's total memory (on CPU: the process's peak RSS after each pack size, and the
    machine's memory).

Not quick: the table, the hardware and the date are appended to bench/RESULTS.md (or to
``out=``). Quick: written only to ``out=`` when given, so a test never edits RESULTS.md.
What ``hydra.sweeper.pack=auto`` needs (``AUTO_PACK`` in sweeping/packing.py) is the c/a
column and the two sweep rows on the GPU.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import pack_bench  # noqa: E402
import throughput  # noqa: E402
from cli_args import key_values  # noqa: E402

from optimlab.engine import data as datasets  # noqa: E402
from optimlab.engine.models import FastNet, TuduiCNN  # noqa: E402
from optimlab.run.provenance import device_info  # noqa: E402

DEFAULTS = {
    "device": "auto",
    "quick": "false",  # true: CPU-sized everything (device cpu unless given), the same code paths
    "out": "",  # where the table goes; empty: bench/RESULTS.md when not quick, nowhere when quick
    "matmul_n": 0,  # 0: 8192 on cuda, 256 quick
    "batch_size": 0,  # throughput batch; 0: 1024 on cuda, 512 on cpu, 64 quick
    "train_size": 0,  # throughput images; 0: 50 000, 512 quick
    "rounds": 0,  # throughput windows; 0: 5, 3 quick
    "seconds": 0.0,  # throughput window length; 0: 1.0, 0.2 quick
    "compile": "auto",  # throughput only (packs are not compiled): true on cuda
    "ks": "1,8,32",
    "pack_train_size": 0,  # pack_bench images per trial; 0: 2048, 16 quick
    "pack_batch_size": 0,  # pack_bench batch; 0: 64, 16 quick
    "workers": -1,  # pack_bench (b) with N worker processes; -1: 4 on cuda, off (0) otherwise
    "sweep_trials": 0,  # 0: 32, 4 quick
    "sweep_train_size": 0,  # 0: 2048, 64 quick
    "epochs": 0,  # sweep trials' epochs; 0: 2, 1 quick
    "threads": 0,  # torch.set_num_threads (and OMP_NUM_THREADS for the sweeps); 0: torch's default
}


def parse_args(argv: list[str]) -> dict:
    args, given = key_values(argv, DEFAULTS)
    quick = args["quick"] in ("true", "1", "yes")
    args["quick"] = quick
    if args["device"] == "auto":
        args["device"] = "cpu" if quick or not torch.cuda.is_available() else "cuda"
    cuda = args["device"] == "cuda"

    def pick(key, quick_value, cuda_value, cpu_value):
        if key not in given:
            args[key] = quick_value if quick else cuda_value if cuda else cpu_value

    pick("matmul_n", 256, 8192, 2048)
    pick("batch_size", 64, 1024, 512)
    pick("train_size", 256, 50000, 50000)
    pick("rounds", 2, 5, 5)
    pick("seconds", 0.1, 1.0, 1.0)
    pick("pack_train_size", 16, 2048, 2048)
    pick("pack_batch_size", 16, 64, 64)
    pick("workers", 0, 4, 0)
    pick("sweep_trials", 4, 32, 32)
    pick("sweep_train_size", 64, 2048, 2048)
    pick("epochs", 1, 2, 2)
    args["compile"] = cuda if args["compile"] == "auto" else args["compile"] in ("true", "1", "yes")
    args["precision"] = "bf16" if cuda else "fp32"
    return args


# --------------------------------------------------------------------------- measurements


def matmul_ceiling_tflops(device: torch.device, n: int) -> float:
    """FLOP/s of an n×n×n bf16 matmul on the device, median of 5 timed runs after a warm-up."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    torch.matmul(a, b)
    reps = 10 if device.type == "cuda" else 1
    times = []
    for _ in range(5):
        throughput.sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        throughput.sync(device)
        times.append((time.perf_counter() - t0) / reps)
    return 2 * n**3 / statistics.median(times) / 1e12


def training_speeds(device: torch.device, args: dict) -> dict[str, tuple[float, float]]:
    """{model name: (images/s median, forward+backward FLOPs per image)} through the engine."""
    splits = throughput.synthetic_cifar(args["train_size"])
    data = datasets.DeviceData(splits, device, mean=list(throughput.MEAN), std=list(throughput.STD),
                               crop_padding=4, flip=True, channels_last=True)  # fmt: skip
    bench_args = {"batch_size": args["batch_size"], "precision": args["precision"], "compile": args["compile"]}
    out = {}
    for name, cls in (("TuduiCNN", TuduiCNN), ("FastNet", FastNet)):
        torch.manual_seed(0)
        run = throughput.engine_contestant(data, cls(), bench_args, True)
        max_steps = max(1, len(splits.train) // args["batch_size"])
        steps = throughput.calibrate(run, device, args["seconds"], max_steps=max_steps)
        speeds = []
        for _ in range(args["rounds"]):
            throughput.sync(device)
            t0 = time.perf_counter()
            images = run(steps)
            throughput.sync(device)
            speeds.append(images / (time.perf_counter() - t0))
        flops = throughput.train_flops_per_image(cls, device, torch.channels_last)
        out[name] = (statistics.median(speeds), flops)
    return out


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def total_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**20
    import psutil

    return psutil.virtual_memory().total / 2**20


def packs(device: torch.device, args: dict) -> list[dict]:
    """pack_bench's (a), (b) where asked, and (c) at each K, with the peak memory of (c)."""
    pargs = pack_bench.parse_args([
        f"device={device.type}", "models=tudui", "shapes=cifar", f"ks={args['ks']}",
        f"train_size={args['pack_train_size']}", f"batch_size={args['pack_batch_size']}", f"precision={args['precision']}",
        f"workers={max(args['workers'], 1)}", f"threads={args['threads']}",
    ])  # fmt: skip
    data = pack_bench.make_data("cifar", pargs["train_size"], device)
    rows = []
    for k in (int(k) for k in args["ks"].split(",")):
        a = pack_bench.run_a("tudui", data, k, pargs)
        b = pack_bench.run_b("tudui", "cifar", k, pargs) if args["workers"] > 0 and k > 1 else None
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        c = pack_bench.run_c("tudui", data, k, pargs)
        rows.append({"k": k, "a": a, "b": b, "c": c, "peak_mib": peak_memory_mib(device)})
    return rows


def sweep_seconds(device: torch.device, args: dict, pack: int, work: Path) -> float:
    """Wall seconds of a real ``train.py -m`` sweep of ``sweep_trials`` trials, pack=K."""
    name = f"pack_{pack}"
    cmd = [
        sys.executable, str(ROOT / "train.py"), "-m", "hydra/sweeper=optimlab", "hydra/sweeper/pruner=none",
        "model=tudui", "optimizer=momentum", "data=synthetic", f"data.train_size={args['sweep_train_size']}",
        "data.val_size=256", "data.test_size=64", f"epochs={args['epochs']}", f"device={device.type}",
        "tensorboard=false", "plots=false", "quiet=true",
        "lr=tag(log, interval(1e-3, 0.1))", "momentum=interval(0.5, 0.95)",
        f"hydra.sweeper.n_trials={args['sweep_trials']}", f"hydra.sweeper.pack={pack}", "hydra.sweeper.plots=false",
        "hydra.sweeper.max_failures=null", f"hydra.sweeper.study_name={name}", f"hydra.sweep.dir={work / name}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if args["threads"]:
        env["OMP_NUM_THREADS"] = str(args["threads"])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the pack={pack} sweep failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return seconds


# --------------------------------------------------------------------------- the report


def hardware(device: torch.device) -> list[str]:
    cpu = device_info(torch.device("cpu"))["name"]
    lines = []
    if device.type == "cuda":
        lines.append(f"device {torch.cuda.get_device_name(device)}, {total_memory_mib(device) / 1024:.0f} GiB, "
                     f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")  # fmt: skip
    else:
        lines.append("device cpu (no GPU: these are not GPU figures)")
    lines.append(f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    lines.append(f"Python {platform.python_version()}, torch {torch.__version__}")
    return lines


def table(device, args, ceiling, speeds, pack_rows, sweeps) -> list[str]:
    def n(x: float, digits: int = 0) -> str:
        return f"{x:,.{digits}f}".replace(",", " ")

    rows = [("bf16 matmul ceiling", n(ceiling, 3), "TFLOP/s", f"{args['matmul_n']}³ torch.matmul, median of 5")]
    for name, (ips, flops) in speeds.items():
        achieved = ips * flops / 1e12
        rows.append((f"{name} training", n(ips), "images/s",
                     f"{flops / 1e6:.1f} MFLOP/image fwd+bwd: {achieved:.3f} TFLOP/s = {achieved / ceiling:.1%} of the "
                     f"ceiling; batch {args['batch_size']}, {args['precision']}, compile {args['compile']}"))  # fmt: skip
    for r in pack_rows:
        k = r["k"]
        per_h = {key: k * 3600 / r[key] for key in ("a", "b", "c") if r[key]}
        extra = f"; (b) {args['workers']} workers {n(per_h['b'])}/h, c/b {r['b'] / r['c']:.2f}" if "b" in per_h else ""
        rows.append((f"pack K={k} packed", n(per_h["c"]), "trials/h",
                     f"(a) one after another {n(per_h['a'])}/h; c/a {r['a'] / r['c']:.2f}{extra}; "
                     f"TuduiCNN, CIFAR shape, {args['pack_train_size']} images, batch {args['pack_batch_size']}, 1 epoch"))  # fmt: skip
    trials = args["sweep_trials"]
    for pack in sorted(sweeps):
        seconds = sweeps[pack]
        note = f"; {sweeps[1] / seconds:.2f}× pack=1" if pack != 1 else ""
        rows.append((f"sweep pack={pack}", n(trials * 3600 / seconds), "trials/h",
                     f"{trials} trials `train.py -m` in {seconds:.1f} s, process start to end{note}"))  # fmt: skip
    what = "torch.cuda.max_memory_allocated of (c)" if device.type == "cuda" else "process peak RSS after (c)"
    for r in pack_rows:
        rows.append((f"memory pack K={r['k']}", n(r["peak_mib"]), "MiB", what))
    rows.append(("memory total", n(total_memory_mib(device)), "MiB", "device" if device.type == "cuda" else "host (psutil)"))
    out = ["| figure | value | unit | detail |", "|---|---:|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return out


def main(argv: list[str]) -> None:
    started = datetime.now(timezone.utc)
    t_start = time.perf_counter()
    args = parse_args(argv)
    device = torch.device(args["device"])
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    torch.backends.cudnn.benchmark = True
    command = " ".join(["bash bench/gpu.sh", *argv])
    print(f"# optimlab GPU benchmark  {started.isoformat(timespec='seconds')}")
    print(f"# command: {command}")
    for line in hardware(device):
        print(f"# {line}")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)

    def phase(name: str, t0: float) -> None:
        print(f"# {name}: {time.perf_counter() - t0:.1f} s", flush=True)

    t0 = time.perf_counter()
    ceiling = matmul_ceiling_tflops(device, args["matmul_n"])
    phase(f"ceiling {ceiling:.3f} TFLOP/s", t0)
    t0 = time.perf_counter()
    speeds = training_speeds(device, args)
    phase(f"training ({', '.join(f'{k} {v[0]:.0f} images/s' for k, v in speeds.items())})", t0)
    t0 = time.perf_counter()
    pack_rows = packs(device, args)
    phase(f"packs K = {', '.join(str(r['k']) for r in pack_rows)}", t0)
    wide = max(int(k) for k in args["ks"].split(","))
    wide = min(wide, args["sweep_trials"])
    work = Path(tempfile.mkdtemp(prefix="optimlab_gpu_bench_"))
    t0 = time.perf_counter()
    try:
        sweeps = {pack: sweep_seconds(device, args, pack, work) for pack in (wide, 1)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    phase(f"sweeps pack={wide} and pack=1, {args['sweep_trials']} trials each", t0)
    elapsed = time.perf_counter() - t_start
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; took {elapsed:.0f} s")
    if elapsed > 480 and not args["quick"]:
        print(f"# took {elapsed:.0f} s, over the 8 minutes this command is sized for: smaller sizes next time")

    lines = table(device, args, ceiling, speeds, pack_rows, sweeps)
    print()
    print("\n".join(lines))
    title = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu" + (", quick" if args["quick"] else "")
    section = [
        "", f"### bench/gpu.py: {title} ({started.strftime('%Y-%m-%d %H:%M')} UTC)", "",
        f"`{command}`, {elapsed:.0f} s; " + "; ".join(hardware(device)) + ".", "", *lines, "",
    ]  # fmt: skip
    out = Path(args["out"]) if args["out"] else None if args["quick"] else ROOT / "bench" / "RESULTS.md"
    if out is not None:
        with out.open("a") as f:
            f.write("\n".join(section))
        print(f"\n# appended to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
