"""Where one engine training step spends its time: torch.profiler over a few steps.

    uv run python bench/profile_step.py                       # TuduiCNN, batch 512, cpu
    uv run python bench/profile_step.py model=fastnet batch_size=256 steps=5

Prints the operators sorted by self CPU time (or CUDA time on cuda), with the share of
the step that goes to convolutions, pooling, the data path (gather, crop, flip,
normalise) and the optimizer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import MEAN, STD, synthetic_cifar  # noqa: E402

from optimlab.engine import data as datasets  # noqa: E402
from optimlab.engine.models import FastNet, TuduiCNN  # noqa: E402
from optimlab.engine.training import LoopConfig, TrainState, train_one_epoch  # noqa: E402


def main(argv: list[str]) -> None:
    args = {"model": "tudui", "batch_size": "512", "steps": "6", "device": "cpu", "channels_last": "true"}
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in args:
            raise SystemExit(f"unknown argument {key!r}; known: {', '.join(args)}")
        args[key] = value
    device = torch.device(args["device"])
    bs, steps = int(args["batch_size"]), int(args["steps"])
    cl = args["channels_last"] in ("true", "1")
    splits = synthetic_cifar(bs * steps)
    data = datasets.DeviceData(splits, device, mean=list(MEAN), std=list(STD), crop_padding=4, flip=True, channels_last=cl)
    model = {"tudui": TuduiCNN, "fastnet": FastNet}[args["model"]]()
    model = model.to(device=device, memory_format=torch.channels_last if cl else torch.contiguous_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    state = TrainState(model, opt, torch.optim.lr_scheduler.ConstantLR(opt, 1.0), torch.amp.GradScaler(enabled=False))
    loop = LoopConfig(epochs=1, batch_size=bs, seed=0)
    loss_fn = nn.CrossEntropyLoss()
    train_one_epoch(state, data, loop, loss_fn)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train_one_epoch(state, data, loop, loss_fn)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25))
    events = prof.key_averages()
    total = sum(getattr(e, key) for e in events)
    groups = {  # each operator counts once, in the first group whose key it contains
        "convolution (fwd+bwd)": ("conv",),
        "max-pool (fwd+bwd)": ("max_pool",),
        "linear / matmul": ("addmm", "aten::mm", "linear"),
        "optimizer (SGD) and zero_grad": ("sgd", "_foreach", "zero_"),
        "data: gather/crop/flip/normalise": ("index", "pad", "reflection", "flip", "where", "addcmul", "randperm",
                                             "randint", "rand", "contiguous", "copy_", "clone", "aten::to",
                                             "_to_copy"),
    }  # fmt: skip
    shares = dict.fromkeys([*groups, "other"], 0.0)
    for e in events:
        name = next((g for g, keys in groups.items() if any(k in e.key.lower() for k in keys)), "other")
        shares[name] += getattr(e, key)
    print(f"{'share of self time':<40} {'ms':>8} {'%':>6}")
    for name, t in shares.items():
        print(f"{name:<40} {t / 1000:>8.1f} {100 * t / total:>5.1f}%")
    print(f"{'all operators':<40} {total / 1000:>8.1f} (over {steps} steps of batch {bs})")


if __name__ == "__main__":
    main(sys.argv[1:])
