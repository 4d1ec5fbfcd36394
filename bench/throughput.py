"""Training throughput: the seeds' loop vs a torchvision DataLoader pipeline vs optimlab's engine.

    uv run python bench/throughput.py                      # cpu, fp32
    uv run python bench/throughput.py device=cuda          # bf16, channels_last, torch.compile
    uv run python bench/throughput.py batch_size=512 rounds=7 seconds=3

Every contestant trains the seeds' CIFAR-10 CNN (TuduiCNN) with SGD on the same synthetic
CIFAR-shaped data (50 000 × 3 × 32 × 32 uint8) in ONE process, in interleaved rounds, so
that load from other processes hits all of them alike:

  (a) the seeds' loop: DataLoader(batch_size=1) over PIL images with ToTensor, contiguous model
  (b) a standard torchvision pipeline at the engine's batch size: PIL images, RandomCrop(reflect)
      + RandomHorizontalFlip + ToTensor + Normalize, DataLoader with 0 and with 2 workers
      (the better of the two is "b")
  (c) optimlab's engine (optimlab.engine.training.train_one_epoch over optimlab.engine.data.DeviceData) with
      the same augmentation, channels_last, at that batch size; also with a contiguous model
      and with the fast net (FastNet)

Each contestant's figure is the median over rounds of images/s in a window of about
``seconds`` (warm-up excluded; on CUDA the clocks are read after synchronize). Efficiency is
the engine's achieved FLOP/s (the model's forward+backward FLOPs, counted with
torch.utils.flop_counter) over the FLOP/s of a 2048³ matmul measured in the same rounds.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cli_args import key_values  # noqa: E402  (bench/, beside this script)
from optimlab.engine import data as datasets  # noqa: E402
from optimlab.engine.models import FastNet, TuduiCNN  # noqa: E402
from optimlab.engine.training import LoopConfig, TrainState, train_one_epoch, warm_up  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DEFAULTS = {
    "device": "auto",
    "batch_size": 0,  # 0: 512 on cpu, 1024 on cuda
    "rounds": 7,
    "seconds": 1.5,  # length of one timing window
    "train_size": 50000,
    "precision": "auto",  # fp32 on cpu, bf16 on cuda
    "compile": "auto",  # false on cpu, true on cuda
    "threads": 0,  # torch.set_num_threads; 0: torch's default
    "skip": "",  # comma-separated contestants to leave out, e.g. skip=b0,fast
}


def parse_args(argv: list[str]) -> dict:
    args, _ = key_values(argv, DEFAULTS)
    if args["device"] == "auto":
        args["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args["device"] == "cuda"
    if args["batch_size"] == 0:
        args["batch_size"] = 1024 if cuda else 512
    if args["precision"] == "auto":
        args["precision"] = "bf16" if cuda else "fp32"
    args["compile"] = cuda if args["compile"] == "auto" else args["compile"] in ("true", "1", "yes")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- the data


def synthetic_cifar(train_size: int) -> datasets.Splits:
    cfg = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf/data/synthetic.yaml"))
    cfg.update(train_size=train_size, val_size=1000, test_size=1000)
    return datasets.load(cfg)


class PILImages(Dataset):
    """What torchvision.datasets.CIFAR10 does: HWC uint8 arrays → PIL image → transform."""

    def __init__(self, split: datasets.Split, transform):
        self.images = split.x.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = split.y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


# --------------------------------------------------------------------------- contestants
# Each is a function run(steps) -> images trained, plus its batch size.


def dataloader_contestant(loader: DataLoader, model: nn.Module, device: torch.device, memory_format):
    """The textbook loop: for imgs, targets in loader: forward, loss, zero_grad, backward, step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    it = iter(loader)
    total = 0.0

    def run(steps: int) -> int:
        nonlocal it, total
        seen = 0
        for _ in range(steps):
            try:
                imgs, targets = next(it)
            except StopIteration:
                it = iter(loader)
                imgs, targets = next(it)
            imgs = imgs.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            targets = targets.to(device, non_blocking=True)
            outputs = model(imgs)
            loss = loss_fn(outputs, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()  # the seeds' running loss: a sync every step, as they do
            seen += len(targets)
        return seen

    return run


def engine_contestant(data: datasets.DeviceData, model: nn.Module, args: dict, channels_last: bool):
    """optimlab's own loop (training.train_one_epoch) over windows of `steps` batches."""
    device, bs = data.device, args["batch_size"]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    engine_data = copy.copy(data)
    engine_data.memory_format = memory_format
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    state = TrainState(model, optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=False))
    loop = LoopConfig(
        epochs=1,
        batch_size=bs,
        seed=0,
        precision=args["precision"],
        check_every=1 if device.type == "cpu" else 50,  # as runner.run sets it
        compile=args["compile"],
    )
    loss_fn = nn.CrossEntropyLoss()
    if args["compile"]:
        model.compile()
    full = data.train

    def run(steps: int) -> int:
        n = min(steps, len(full) // bs) * bs  # full batches only: one shape, no recompiles
        engine_data.train = datasets.Split(full.x[:n], full.y[:n])  # a view: the window's "epoch"
        if args["compile"] and state.epoch == 0:
            warm_up(state, engine_data, loop, loss_fn)
        train_one_epoch(state, engine_data, loop, loss_fn)
        state.epoch += 1  # a new permutation every window
        return n

    return run


def matmul_gflops(device: torch.device, dtype=torch.float32, n: int = 2048) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def train_flops_per_image(model_cls, device: torch.device, memory_format, batch: int = 8) -> float:
    """Forward + backward FLOPs of one image (convs, matmuls: what the flop counter counts)."""
    model = model_cls().to(device=device, memory_format=memory_format)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


# --------------------------------------------------------------------------- main


def calibrate(run: Callable[[int], int], device: torch.device, seconds: float, max_steps: int) -> int:
    """Warm up, then the number of steps that fills about `seconds`."""
    run(2)
    sync(device)
    steps, elapsed = 2, 0.0
    while elapsed < 0.25 * seconds and steps < max_steps:
        steps = min(2 * steps, max_steps)
        t0 = time.perf_counter()
        run(steps)
        sync(device)
        elapsed = time.perf_counter() - t0
    return max(1, min(max_steps, math.ceil(steps * seconds / max(elapsed, 1e-9))))


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    device = torch.device(args["device"])
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    torch.backends.cudnn.benchmark = True
    bs = args["batch_size"]
    skip = set(filter(None, args["skip"].split(",")))
    print(f"# optimlab throughput benchmark  {datetime.now().isoformat(timespec='seconds')}")
    print(f"# command: {' '.join(['uv run python bench/throughput.py', *argv])}")
    print(f"# python {platform.python_version()}  torch {torch.__version__}  device {device}", end="")
    if device.type == "cuda":
        print(f" ({torch.cuda.get_device_name(device)})")
    else:
        print(f" ({datasets_cpu_name()}, {torch.get_num_threads()} threads)")
    print(f"# batch_size {bs}  precision {args['precision']}  compile {args['compile']}  rounds {args['rounds']}")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    t0 = time.perf_counter()
    splits = synthetic_cifar(args["train_size"])
    data = datasets.DeviceData(splits, device, mean=list(MEAN), std=list(STD), crop_padding=4, flip=True, channels_last=True)
    print(f"# data: {len(splits.train)} train images, made and placed in {time.perf_counter() - t0:.1f}s")

    cuda = device.type == "cuda"
    seed_tf = transforms.ToTensor()
    std_tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4, padding_mode="reflect"),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    torch.manual_seed(0)
    contestants: dict[str, tuple[str, Callable[[int], int], int]] = {}
    contig = torch.contiguous_format
    if "a" not in skip:
        seed_loader = DataLoader(PILImages(splits.train, seed_tf), batch_size=1, shuffle=True)
        contestants["a"] = (
            "seeds' loop: DataLoader(batch 1, PIL, ToTensor)",
            dataloader_contestant(seed_loader, TuduiCNN().to(device), device, contig),
            1,
        )
    for workers in (0, 2):
        if f"b{workers}" in skip:
            continue
        loader = DataLoader(
            PILImages(splits.train, std_tf),
            batch_size=bs,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            pin_memory=cuda,
            persistent_workers=workers > 0,
        )
        contestants[f"b{workers}"] = (
            f"torchvision DataLoader(batch {bs}, {workers} workers, crop+flip)",
            dataloader_contestant(loader, TuduiCNN().to(device), device, contig),
            bs,
        )
    contestants["c"] = ("optimlab engine (channels_last)", engine_contestant(data, TuduiCNN(), args, True), bs)
    if "c_contig" not in skip:
        contestants["c_contig"] = (
            "optimlab engine (contiguous)",
            engine_contestant(data, TuduiCNN(), args, False),
            bs,
        )
    if "fast" not in skip:
        contestants["fast"] = ("optimlab engine, FastNet", engine_contestant(data, FastNet(), args, True), bs)

    max_images = len(splits.train)
    steps = {}
    t0 = time.perf_counter()
    for key, (_, run, step_images) in contestants.items():
        steps[key] = calibrate(run, device, args["seconds"], max_steps=max_images // step_images)
    print(f"# warm-up and calibration: {time.perf_counter() - t0:.1f}s (not timed)")

    speeds: dict[str, list[float]] = {key: [] for key in contestants}
    ceilings: list[float] = []  # one per round: the mean of a matmul before and after the round
    for _ in range(args["rounds"]):
        before = matmul_gflops(device)
        for key, (_, run, _) in contestants.items():
            sync(device)
            t = time.perf_counter()
            images = run(steps[key])
            sync(device)
            speeds[key].append(images / (time.perf_counter() - t))
        ceilings.append((before + matmul_gflops(device)) / 2)
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    med = {key: statistics.median(v) for key, v in speeds.items()}
    print()
    print(f"{'contestant':<58}{'images/s (median)':>18}   per round")
    for key, (label, _, _) in contestants.items():
        rounds = " ".join(f"{v:.0f}" for v in speeds[key])
        print(f"({key}) {label:<53}{med[key]:>18.0f}   {rounds}")

    def ratio(num: list[float], den: list[float]) -> str:
        per_round = [n / d for n, d in zip(num, den)]
        rounds = " ".join(f"{r:.2f}" for r in per_round)
        return f"{statistics.median(num) / statistics.median(den):.2f}  (per round: {rounds}; median {statistics.median(per_round):.2f})"

    b_keys = [k for k in ("b0", "b2") if k in med]
    print()
    print("ratios: of the medians, and per round (contestants of one round ran back to back)")
    if "a" in med:
        print(f"c/a  = {ratio(speeds['c'], speeds['a'])}    target >= 7.5")
    if b_keys:
        best_b = [max(v) for v in zip(*(speeds[k] for k in b_keys))]  # the faster DataLoader, per round
        print(f"c/b  = {ratio(speeds['c'], best_b)}    target >= 1.6; b = the faster of {', '.join(b_keys)}")
    if "c_contig" in med:
        print(f"channels_last / contiguous = {ratio(speeds['c'], speeds['c_contig'])}")
    flops = train_flops_per_image(TuduiCNN, device, torch.channels_last)
    ceiling = statistics.median(ceilings)
    achieved = med["c"] * flops / 1e9
    per_round = " ".join(f"{c * flops / 1e9 / m:.0%}" for c, m in zip(speeds["c"], ceilings))
    print(
        f"efficiency = {achieved:.1f} GFLOP/s / {ceiling:.1f} GFLOP/s (fp32 2048^3 matmul) = "
        f"{achieved / ceiling:.0%}  (per round: {per_round})    target >= 80%"
    )
    print(f"             {flops / 1e6:.1f} MFLOP per image forward+backward (torch.utils.flop_counter)")
    if args["precision"] != "fp32":
        low = matmul_gflops(device, torch.bfloat16 if args["precision"] == "bf16" else torch.float16)
        print(f"          = {achieved / low:.0%} of a {args['precision']} 2048^3 matmul ({low:.1f} GFLOP/s)")
    if "fast" in med:
        fast_flops = train_flops_per_image(FastNet, device, torch.channels_last)
        print(
            f"fast net: {med['fast']:.0f} images/s, {med['fast'] * fast_flops / 1e9:.1f} GFLOP/s "
            f"({fast_flops / 1e6:.1f} MFLOP per image fwd+bwd)"
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MiB (whole benchmark process: PIL copies of the data included)")
    if cuda:
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


def datasets_cpu_name() -> str:
    from optimlab.run.provenance import device_info

    return device_info(torch.device("cpu"))["name"]


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main(sys.argv[1:])
