"""The fast engine computes what a plain loop computes, and its data path is exact.

Device-resident batches, on-device augmentation, the streaming fallback and the
torch.compile warm-up are checked against plain references on CPU.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from optimlab.engine import data as datasets
from optimlab.errors import ConfigError, Diverged
from optimlab.engine.models import FastNet, TuduiCNN
from optimlab.engine.training import LoopConfig, StepLosses, TrainState, evaluate, train_one_epoch, warm_up

from conftest import ROOT, TINY, compose_config, run_dirs, train_cli
from optimlab.config import validate

CPU = torch.device("cpu")


def data_cfg(train=200, val=40, test=30, crop=0, flip=False, **extra):
    return {
        "_target_": "optimlab.engine.data.make_synthetic",
        "name": "synthetic",
        "channels": 3,
        "image_size": 16,
        "num_classes": 10,
        "train_size": train,
        "val_size": val,
        "test_size": test,
        "noise": 0.5,
        "split_seed": 0,
        "shuffle": True,
        "normalize": True,
        "mean": None,
        "std": None,
        "augment": {"crop_padding": crop, "flip": flip},
        **extra,
    }


def make_synthetic(cfg: dict) -> datasets.Splits:
    return datasets.load(cfg)


def device_data(splits: datasets.Splits, cfg: dict, device=CPU, **kwargs) -> datasets.DeviceData:
    """DeviceData as the runner builds it from a data config."""
    return datasets.DeviceData(
        splits, device, normalize=cfg["normalize"], mean=cfg["mean"], std=cfg["std"],
        crop_padding=cfg["augment"]["crop_padding"], flip=cfg["augment"]["flip"], shuffle=cfg["shuffle"], **kwargs,
    )  # fmt: skip


def random_crop(x: torch.Tensor, padding: int, g: torch.Generator) -> torch.Tensor:
    """Reference: random crops of a batch after reflect padding (pad, then index)."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Reference: flip each image horizontally with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def make_state(model: nn.Module, lr=0.05) -> TrainState:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    return TrainState(model, opt, sched, torch.amp.GradScaler("cpu", enabled=False))


# --------------------------------------------------------------------------- engine == plain loop


@pytest.mark.parametrize("model_cls", [TuduiCNN, FastNet])
def test_engine_matches_plain_reference_loop(model_cls):
    """Same batches, augmentation off, fp32: the engine (channels_last, uint8 on-device
    normalisation, permutation slices) and a textbook loop end with the same losses and weights."""
    cfg = data_cfg(train=100, image_size=8)
    splits = make_synthetic(cfg)
    data = device_data(splits, cfg, CPU, channels_last=True)
    batch_size, seed, epochs = 32, 3, 2  # 4 steps per epoch, the last one partial

    torch.manual_seed(0)
    extra = {"widths": (8, 16)} if model_cls is FastNet else {}
    init = model_cls(in_channels=3, image_size=8, num_classes=10, **extra)
    engine_model = copy.deepcopy(init).to(memory_format=torch.channels_last)
    ref_model = copy.deepcopy(init)

    state = make_state(engine_model)
    loop = LoopConfig(epochs=epochs, batch_size=batch_size, seed=seed)
    engine_losses = []
    for _ in range(epochs):
        engine_losses.append(train_one_epoch(state, data, loop, nn.CrossEntropyLoss()))
        state.epoch += 1

    # the reference: float images normalised on the host, contiguous, per-step Python
    x_all = splits.train.x.float() / 255
    mean = x_all.mean(dim=(0, 2, 3), keepdim=True)
    std = x_all.transpose(0, 1).reshape(3, -1).std(1).view(1, 3, 1, 1)
    x_all = (x_all - mean) / std
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.05, momentum=0.9)
    ref_losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(x_all), generator=datasets.epoch_generator(seed, epoch))
        total = 0.0
        ref_model.train()
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ref_opt.zero_grad()
            loss = nn.functional.cross_entropy(ref_model(x_all[idx]), splits.train.y[idx])
            loss.backward()
            ref_opt.step()
            total += loss.item() * len(idx)
        ref_losses.append(total / len(order))

    assert engine_losses == pytest.approx(ref_losses, rel=1e-4, abs=1e-5)
    ref_params = dict(ref_model.state_dict())
    for name, value in engine_model.state_dict().items():
        torch.testing.assert_close(value, ref_params[name], rtol=1e-3, atol=1e-4, msg=name)


def test_step_losses_show_hooks_every_step_check_at_their_cadence_and_average_over_images():
    """What every step leaves behind, solo or packed (StepLosses): the hooks see steps 1..step,
    a NaN is caught at the next check (every check_every steps, and always at the last step),
    counted from 1, and the epoch's loss is the mean over its images."""
    state = make_state(nn.Linear(2, 2))
    state.epoch = 4  # 0-based: the error says epoch 5
    seen = []

    def hook(st, step, n_steps, losses):
        seen.append((st is state, step, n_steps, losses.tolist()))

    losses = StepLosses(state, LoopConfig(epochs=5, batch_size=4, seed=0), 3, CPU, [hook])
    for loss, size in ((1.0, 4), (2.0, 4), (4.0, 2)):
        losses.add(torch.tensor(loss), size)
    assert seen == [(True, 1, 3, [1.0]), (True, 2, 3, [1.0, 2.0]), (True, 3, 3, [1.0, 2.0, 4.0])]
    assert losses.mean() == pytest.approx((4 * 1.0 + 4 * 2.0 + 2 * 4.0) / 10)

    every_2 = StepLosses(state, LoopConfig(epochs=5, batch_size=4, seed=0, check_every=2), 3, CPU)
    every_2.add(torch.tensor(0.5), 4)
    with pytest.raises(Diverged) as err:
        every_2.add(torch.tensor(float("nan")), 4)  # step 2: a check
    assert (err.value.epoch, err.value.step, err.value.last_finite_loss) == (5, 2, 0.5)

    every_50 = StepLosses(state, LoopConfig(epochs=5, batch_size=4, seed=0, check_every=50), 3, CPU)
    every_50.add(torch.tensor(float("inf")), 4)
    every_50.add(torch.tensor(1.0), 4)  # no check before the last step
    with pytest.raises(Diverged) as err:
        every_50.add(torch.tensor(1.0), 4)
    assert (err.value.epoch, err.value.step, err.value.last_finite_loss) == (5, 1, None)


# --------------------------------------------------------------------------- augmentation


def coordinate_images(n: int, size: int = 16) -> torch.Tensor:
    """Channel 0 holds each pixel's row, channel 1 its column, channel 2 the sample index."""
    rows = torch.arange(size).view(1, size, 1).expand(n, size, size)
    cols = torch.arange(size).view(1, 1, size).expand(n, size, size)
    ids = torch.arange(n).view(n, 1, 1).expand(n, size, size)
    return torch.stack([rows, cols, ids], dim=1).float()


def test_random_crop_shifts_uniformly_with_reflect_padding():
    n, pad, size = 4000, 4, 16
    x = coordinate_images(n, size)
    out = random_crop(x, pad, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    # the centre pixel is never a padded one: its coordinates give each sample's shift
    dy = (out[:, 0, size // 2, size // 2] - size // 2).long()
    dx = (out[:, 1, size // 2, size // 2] - size // 2).long()
    assert dy.min() == -pad and dy.max() == pad and dx.min() == -pad and dx.max() == pad
    for shift in (dy, dx):  # 9 offsets, each about 1/9 of the time
        freq = torch.bincount(shift + pad, minlength=2 * pad + 1).float() / n
        assert ((freq > 0.08) & (freq < 0.145)).all(), freq
    assert ((dy != 0) | (dx != 0)).float().mean() > 0.95  # crops actually happen
    # every output pixel is an input pixel of the same sample (reflect: no zeros invented),
    # and inside the image each row/column is the input's, shifted
    assert torch.equal(out[:, 2], x[:, 2])
    r = torch.arange(size)
    want_rows = (r.view(1, -1) + dy.view(-1, 1)).abs()
    want_rows = torch.where(want_rows > size - 1, 2 * (size - 1) - want_rows, want_rows)
    assert torch.equal(out[:, 0, :, 0].long(), want_rows)
    assert out[:, :2].min() >= 0 and out[:, :2].max() <= size - 1


def test_random_flip_flips_about_half_the_batch():
    n = 4000
    x = coordinate_images(n)
    out = random_flip(x, torch.Generator().manual_seed(1))
    flipped = out[:, 1, 0, 0] == 15
    assert torch.equal(out[flipped], x[flipped].flip(3))
    assert torch.equal(out[~flipped], x[~flipped])
    assert 0.46 < flipped.float().mean() < 0.54


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_uint8_crop_and_flip_equals_crop_then_flip(channels_last):
    """The engine's one-gather augmentation on uint8 == reflect-pad crop then flip on floats."""
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for padding, flip in [(4, True), (2, False), (0, True)]:
        g = torch.Generator().manual_seed(9)
        ref = x.float()
        if padding:
            ref = random_crop(ref, padding, g)
        if flip:
            ref = random_flip(ref, g)
        out = datasets.crop_and_flip(x, padding, flip, torch.Generator().manual_seed(9), channels_last)
        assert out.dtype == torch.uint8 and out.is_contiguous(memory_format=layout)
        assert torch.equal(out.float(), ref)


def test_device_data_augments_training_batches_only():
    cfg = data_cfg(train=256, crop=2, flip=True)
    splits = make_synthetic(cfg)
    data = device_data(splits, cfg, CPU, channels_last=True)
    plain = device_data(splits, data_cfg(train=256), CPU, channels_last=True)
    lo, hi = float(plain.shift.min()), float((255 * plain.scale + plain.shift).max())

    batches = list(data.train_batches(64, seed=0, epoch=0))
    unaug = list(plain.train_batches(64, seed=0, epoch=0))
    assert [x.shape for x, _ in batches] == [(64, 3, 16, 16)] * 4
    for (x, y), (xp, yp) in zip(batches, unaug):
        assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
        assert lo - 1e-5 <= x.min() and x.max() <= hi + 1e-5
        assert torch.equal(y, yp)
    changed = torch.cat([(x != xp).flatten(1).any(1) for (x, _), (xp, _) in zip(batches, unaug)])
    assert changed.float().mean() > 0.9  # crop/flip changed almost every image

    # evaluation: no augmentation, exactly the normalised images, in order
    for split in ("train", "val", "test"):
        xs, ys = zip(*data.eval_batches(split, 50))
        raw = getattr(splits, split)
        expected = (raw.x.float() * data.scale + data.shift)
        torch.testing.assert_close(torch.cat(xs), expected, rtol=0, atol=1e-5)
        assert torch.equal(torch.cat(ys), raw.y)


# --------------------------------------------------------------------------- epochs and placement


def indexed_splits(n=203):
    """Labels are sample indices, so a batch says exactly which samples it holds."""
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = datasets.Split(x, torch.arange(n))
    return datasets.Splits(split, datasets.Split(x[:10], torch.arange(10)), datasets.Split(x[:7], torch.arange(7)))


def test_every_sample_exactly_once_per_epoch():
    splits = indexed_splits(203)
    data = device_data(splits, data_cfg(crop=2, flip=True), CPU)
    orders = []
    for epoch in range(3):
        ys = [y for _, y in data.train_batches(32, seed=5, epoch=epoch)]
        assert [len(y) for y in ys] == [32] * 6 + [11]
        order = torch.cat(ys)
        assert torch.equal(order.sort().values, torch.arange(203))
        orders.append(order)
    assert not torch.equal(orders[0], orders[1])  # reshuffled every epoch
    again = torch.cat([y for _, y in data.train_batches(32, seed=5, epoch=1)])
    assert torch.equal(again, orders[1])  # a pure function of (seed, epoch)


def test_streaming_fallback_gives_the_same_batches():
    cfg = data_cfg(train=150, crop=3, flip=True)
    splits = make_synthetic(cfg)
    resident = device_data(splits, cfg, CPU, channels_last=True, placement="device")
    streamed = device_data(splits, cfg, CPU, channels_last=True, placement="host")
    assert streamed.streaming and not resident.streaming
    auto = device_data(splits, cfg, CPU, placement="auto")
    assert not auto.streaming  # cpu: the data is in host memory anyway
    for epoch in (0, 1):
        for (xa, ya), (xb, yb) in zip(
            resident.train_batches(64, 7, epoch), streamed.train_batches(64, 7, epoch), strict=True
        ):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(resident.eval_batches("val", 16), streamed.eval_batches("val", 16), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(ConfigError, match="data_placement"):
        validate(compose_config(["data_placement=disk"]))


@pytest.mark.slow
def test_train_py_runs_with_streaming_forced(tmp_path):
    """`data_placement=host` reaches the engine from the command line and trains to the end."""
    proc = train_cli(*TINY, "model=lenet", "device=cpu", "data_placement=host", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = run_dirs(tmp_path)
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert "streaming batches from host memory" in (run / "train.log").read_text()


# --------------------------------------------------------------------------- compile warm-up


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "dynamo"])
def test_compile_warm_up_leaves_no_trace(compiled):
    """Warm-up runs every batch shape but changes no weight, BatchNorm statistic, gradient or RNG:
    training after it is bit-identical to training without it."""
    cfg = data_cfg(train=100, val=30, test=20)
    data = device_data(make_synthetic(cfg), cfg, CPU)
    loop = LoopConfig(epochs=1, batch_size=32, seed=0, eval_batch_size=16, compile=True)
    torch.manual_seed(0)
    init = FastNet(in_channels=3, image_size=16, num_classes=10, widths=(8, 16))

    def train(warm: bool):
        model = copy.deepcopy(init)
        if compiled:
            model.compile(backend="eager")  # dynamo's tracing and guards, without codegen
        state = make_state(model)
        torch.manual_seed(123)
        if warm:
            before = {k: v.clone() for k, v in model.state_dict().items()}
            rng = torch.get_rng_state()
            warm_up(state, data, loop, nn.CrossEntropyLoss())
            for k, v in model.state_dict().items():
                assert torch.equal(v, before[k]), k
            assert all(p.grad is None for p in model.parameters())
            assert torch.equal(torch.get_rng_state(), rng)
            assert not state.optimizer.state  # no optimizer step was taken
        loss = train_one_epoch(state, data, loop, nn.CrossEntropyLoss())
        return loss, evaluate(model, data, "val", loop), model.state_dict(), torch.rand(3)

    (loss_a, val_a, sd_a, rng_a), (loss_b, val_b, sd_b, rng_b) = train(warm=True), train(warm=False)
    assert loss_a == loss_b and val_a == val_b and torch.equal(rng_a, rng_b)
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k


# --------------------------------------------------------------------------- memory


@pytest.mark.slow
def test_peak_rss_of_cifar_sized_dataset_under_2gb():
    """50 000 × 3 × 32 × 32 synthetic images, held and served on CPU, plus training steps."""
    script = textwrap.dedent(
        """
        import resource, torch
        from omegaconf import OmegaConf
        from torch import nn
        from optimlab.engine import data as datasets
        from optimlab.engine.models import TuduiCNN
        cfg = OmegaConf.to_container(OmegaConf.load("conf/data/synthetic.yaml"))
        cfg.update(train_size=50000, val_size=5000, test_size=5000)
        data = datasets.DeviceData(datasets.load(cfg), torch.device("cpu"), crop_padding=4, flip=True, channels_last=True)
        model = TuduiCNN().to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for step, (x, y) in enumerate(data.train_batches(256, seed=0, epoch=0)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if step == 3:
                break
        with torch.inference_mode():
            for x, y in data.eval_batches("val", 1024):
                model(x)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        """
    )


    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = int(proc.stdout.split()[-1])
    assert peak <= 2 * 1024**3, f"peak RSS {peak / 2**30:.2f} GiB"
