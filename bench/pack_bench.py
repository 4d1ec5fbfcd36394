"""Packed trials: K trials of a sweep trained one after another, by N worker processes, or packed.

    uv run python bench/pack_bench.py quick=true            # the smallest grid, for a CPU: K = 1, 4, 16, 128 images
    uv run python bench/pack_bench.py device=cuda           # the full grid: K = 1, 4, 16, 64
    uv run python bench/pack_bench.py device=cuda ks=32 models=tudui shapes=cifar

The same K trials (an lr x momentum grid of SGD with momentum, one seed, as a sweep draws
them) of the seeds' CNN (TuduiCNN) and of FastNet, on synthetic data of the digits shape
(1x32x32) and of the CIFAR shape (3x32x32), batch 64, are trained:

  (a) one after another in this process (engine.training.fit, as a 1-worker sweep does);
  (b) by N worker processes sharing the device, each training K/N of them one after another
      (as hydra.sweeper.n_workers=N does); timed from the first worker's start of training to
      the last one's end, so process start-up and imports are not counted;
  (c) packed: all K in one engine.packed.fit_packed call.

Each contestant first trains a two-batch warm-up of the same trials (kernel selection, oneDNN
primitive creation, CUDA context), untimed. Printed: seconds, trials/hour and the ratio to (a),
all measured in one run. On CPU, (b) gives each worker cores/N threads.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cli_args import key_values  # noqa: E402  (bench/, beside this script)
from optimlab.engine import data as datasets  # noqa: E402
from optimlab.engine.models import FastNet, TuduiCNN  # noqa: E402
from optimlab.engine.packed import fit_packed  # noqa: E402
from optimlab.engine.training import LoopConfig, TrainState, fit  # noqa: E402
from optimlab.run.provenance import device_info  # noqa: E402

MODELS = {"tudui": TuduiCNN, "fastnet": FastNet}
SHAPES = {"digits": (1, 32), "cifar": (3, 32)}  # (channels, image size)
DEFAULTS = {
    "device": "auto",
    "quick": "false",  # true: ks=1,4,16, train_size=128 (the smallest grid, for a CPU)
    "models": "tudui,fastnet",
    "shapes": "digits,cifar",
    "ks": "1,4,16,64",
    "workers": 4,  # N for (b); min(N, K) workers run
    "batch_size": 64,
    "train_size": 2048,
    "epochs": 1,
    "precision": "fp32",
    "threads": 0,  # torch.set_num_threads for (a) and (c); 0: torch's default
    "skip": "",  # contestants to leave out, e.g. skip=b
    "worker": "",  # internal: run as one worker of (b)
}


def parse_args(argv: list[str]) -> dict:
    args, given = key_values(argv, DEFAULTS, hidden=("worker",))
    if args["quick"] in ("true", "1", "yes"):
        if "ks" not in given:
            args["ks"] = "1,4,16"
        if "train_size" not in given:
            args["train_size"] = 128
    if args["device"] == "auto":
        args["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- the trials


def make_data(shape: str, train_size: int, device: torch.device) -> datasets.DeviceData:
    channels, size = SHAPES[shape]
    splits = datasets.make_synthetic(
        channels=channels, image_size=size, num_classes=10, train_size=train_size,
        val_size=128, test_size=64, noise=0.5, split_seed=0,
    )  # fmt: skip
    return datasets.DeviceData(splits, device, channels_last=device.type == "cuda")


def hyperparameters(k: int, n: int) -> tuple[float, float]:
    """Trial k of n on an lr x momentum grid (lr log-spaced in [1e-3, 1e-1], momentum in [0.5, 0.95])."""
    side = max(1, math.ceil(math.sqrt(n)))
    i, j = divmod(k, side)
    lr = 10 ** (-3 + 2 * (i + 0.5) / side)
    momentum = 0.5 + 0.45 * (j + 0.5) / side
    return lr, momentum


def make_trial(model: str, data: datasets.DeviceData, k: int, n: int, args: dict) -> tuple[TrainState, LoopConfig]:
    torch.manual_seed(k)
    channels = data.train.x.shape[1]
    net = MODELS[model](in_channels=channels, image_size=data.train.x.shape[-1], num_classes=10)
    net = net.to(data.device, memory_format=data.memory_format)
    lr, momentum = hyperparameters(k, n)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    state = TrainState(net, opt, sched, torch.amp.GradScaler(data.device.type, enabled=False))
    cfg = LoopConfig(
        epochs=args["epochs"], batch_size=args["batch_size"], seed=0, precision=args["precision"],
        check_every=1 if data.device.type == "cpu" else 50,
    )  # fmt: skip
    return state, cfg


def warm_data(data: datasets.DeviceData, batch_size: int) -> datasets.DeviceData:
    import copy

    warm = copy.copy(data)
    n = min(len(data.train), 2 * batch_size)
    warm.train = datasets.Split(data.train.x[:n], data.train.y[:n])
    return warm


def train_sequential(model: str, data, ks: list[int], n: int, args: dict) -> list[BaseException | None]:
    results = []
    for k in ks:
        state, cfg = make_trial(model, data, k, n, args)
        try:
            fit(state, data, cfg)
            results.append(None)
        except Exception as e:  # a diverged trial is a result, as in a sweep
            results.append(e)
    return results


def train_packed(model: str, data, ks: list[int], n: int, args: dict) -> list[BaseException | None]:
    made = [make_trial(model, data, k, n, args) for k in ks]
    return fit_packed([s for s, _ in made], data, [c for _, c in made], [[] for _ in made])


# --------------------------------------------------------------------------- contestants


def run_a(model, data, n, args) -> float:
    train_sequential(model, warm_data(data, args["batch_size"]), list(range(min(n, 2))), n, args)
    sync(data.device)
    t0 = time.perf_counter()
    train_sequential(model, data, list(range(n)), n, args)
    sync(data.device)
    return time.perf_counter() - t0


def run_c(model, data, n, args) -> float:
    train_packed(model, warm_data(data, args["batch_size"]), list(range(n)), n, args)
    sync(data.device)
    t0 = time.perf_counter()
    train_packed(model, data, list(range(n)), n, args)
    sync(data.device)
    return time.perf_counter() - t0


def run_b(model, shape, n, args) -> float:
    """N worker processes, each training its share of the K trials one after another. Each
    worker loads its data and warms up, says "ready", and starts when all are ready."""
    workers = min(args["workers"], n)
    threads = max(1, (os.cpu_count() or 1) // workers) if args["device"] == "cpu" else 0
    procs = []
    for w in range(workers):
        spec = json.dumps({"model": model, "shape": shape, "n": n, "ks": list(range(w, n, workers)), "threads": threads})
        cmd = [sys.executable, __file__, *(f"{k}={v}" for k, v in args.items() if k not in ("worker", "quick")), f"worker={spec}"]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for p in procs:
        if p.stdout.readline().strip() != "ready":
            raise SystemExit(f"worker exited with {p.wait()}")
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    spans = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker exited with {p.returncode}")
        spans.append(json.loads(out.strip().splitlines()[-1]))
    return max(s["end"] for s in spans) - min(s["start"] for s in spans)


def worker(args: dict) -> None:
    spec = json.loads(args["worker"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(args["device"])
    data = make_data(spec["shape"], args["train_size"], device)
    train_sequential(spec["model"], warm_data(data, args["batch_size"]), spec["ks"][:1], spec["n"], args)
    sync(device)
    print("ready", flush=True)
    sys.stdin.readline()  # all workers start together
    start = time.time()  # wall clock: comparable across processes
    train_sequential(spec["model"], data, spec["ks"], spec["n"], args)
    sync(device)
    print(json.dumps({"start": start, "end": time.time()}), flush=True)


# --------------------------------------------------------------------------- main


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args["worker"]:
        return worker(args)
    device = torch.device(args["device"])
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    torch.backends.cudnn.benchmark = True
    ks = [int(k) for k in args["ks"].split(",")]
    skip = set(filter(None, args["skip"].split(",")))
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    print(f"# optimlab packed-trials benchmark  {datetime.now().isoformat(timespec='seconds')}")
    print(f"# command: {' '.join(['uv run python bench/pack_bench.py', *argv])}")
    print(f"# python {platform.python_version()}  torch {torch.__version__}  device {device}", end="")
    if device.type == "cuda":
        print(f" ({torch.cuda.get_device_name(device)})")
    else:
        print(f" ({device_info(torch.device('cpu'))['name']}, {'AVX-512' if 'avx512f' in flags else 'no AVX-512'}, {torch.get_num_threads()} threads)")
    print(f"# batch_size {args['batch_size']}  train_size {args['train_size']}  epochs {args['epochs']}  "
          f"precision {args['precision']}  workers (b) {args['workers']}")  # fmt: skip
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print(f"{'model':<8}{'data':<8}{'K':>4}  {'(a) s':>8} {'trials/h':>9}  {'(b) s':>8} {'trials/h':>9} {'b/a':>6}  "
          f"{'(c) s':>8} {'trials/h':>9} {'c/a':>6} {'c/b':>6}")  # fmt: skip
    for model in args["models"].split(","):
        for shape in args["shapes"].split(","):
            data = make_data(shape, args["train_size"], device)
            for n in ks:
                a = run_a(model, data, n, args) if "a" not in skip else math.nan
                b = run_b(model, shape, n, args) if "b" not in skip and n > 1 else math.nan
                c = run_c(model, data, n, args) if "c" not in skip else math.nan
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                per_h = {key: n * 3600 / v for key, v in (("a", a), ("b", b), ("c", c))}
                print(f"{model:<8}{shape:<8}{n:>4}  {a:>8.2f} {per_h['a']:>9.0f}  {b:>8.2f} {per_h['b']:>9.0f} "
                      f"{a / b:>6.2f}  {c:>8.2f} {per_h['c']:>9.0f} {a / c:>6.2f} {b / c:>6.2f}", flush=True)  # fmt: skip
    print()
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("# b/a, c/a: trials/hour relative to (a); (b) at K=1 is (a) and is not run")
    if device.type == "cuda":
        print(f"# peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main(sys.argv[1:])
