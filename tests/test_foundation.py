"""The foundation: every config option composes and trains; the loop matches the seeds;
schedulers step as torch documents; digits reaches real accuracy."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import ToTensor

from conftest import CONF_DIR, compose_config
from optimlab.engine import data as datasets
from optimlab.errors import DataError, DeviceError
from optimlab.engine.models import TuduiCNN
from optimlab.engine.devices import available_devices
from optimlab.run.runner import load_data, run


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# 16×16 images: big enough for every model (LeNet needs ≥ 14, Tudui a multiple of 8).
MICRO = [
    "data=synthetic",
    "data.image_size=16",
    "data.train_size=64",
    "data.val_size=32",
    "data.test_size=32",
    "batch_size=16",
    "epochs=2",
    "tensorboard=false",
    "quiet=true",
    "checkpoint.every=0",
]


def train(tmp_path: Path, overrides: list[str]) -> tuple[float, dict]:
    import json

    cfg = compose_config(overrides)
    value = run(cfg, str(tmp_path))
    return value, json.loads((tmp_path / "summary.json").read_text())


def test_groups_have_the_documented_options():
    assert set(options("model")) >= {"tudui", "lenet", "relu_cnn", "fastnet"}
    assert set(options("optimizer")) >= {"sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop"}
    assert set(options("scheduler")) >= {"constant", "step", "multistep", "exponential", "cosine", "onecycle", "plateau"}
    assert set(options("device")) >= {"auto", "cpu", "cuda", "mps"}
    assert set(options("data")) >= {"cifar10", "digits", "synthetic"}


@pytest.mark.slow
def test_every_model_optimizer_scheduler_combination_trains(tmp_path):
    """A pairwise covering: every optimizer × scheduler pair, with the model rotating so
    every model × optimizer and model × scheduler pair is trained too."""
    models, optimizers, schedulers = options("model"), options("optimizer"), options("scheduler")
    combos = [
        (models[(i + j) % len(models)], optimizer, scheduler)
        for i, optimizer in enumerate(optimizers)
        for j, scheduler in enumerate(schedulers)
    ]
    assert {(m, o) for m, o, _ in combos} == set(itertools.product(models, optimizers))
    assert {(m, s) for m, _, s in combos} == set(itertools.product(models, schedulers))
    for k, (model, optimizer, scheduler) in enumerate(combos):
        overrides = [*MICRO, f"model={model}", f"optimizer={optimizer}", f"scheduler={scheduler}", "lr=0.01"]
        value, summary = train(tmp_path / str(k), overrides)
        assert summary["status"] == "completed", (overrides, summary.get("error"))
        assert summary["epochs_completed"] == 2
        assert 0.0 <= value <= 1.0


@pytest.mark.parametrize("device", options("device"))
def test_every_device_option(tmp_path, device):
    cfg = compose_config([*MICRO, f"device={device}"])
    if device in ("auto", *available_devices()):
        run(cfg, str(tmp_path))
    else:
        with pytest.raises(DeviceError, match=rf"device={device}.*available: cpu"):
            run(cfg, str(tmp_path))
        assert not (tmp_path / "metrics.csv").exists()


def write_tiny_cifar(root: Path, per_file: int = 12) -> None:
    """A tiny dataset in CIFAR-10's own on-disk format (python pickles of 3072-byte rows)."""
    folder = root / datasets.CIFAR10_FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*datasets.CIFAR10_TRAIN_FILES, datasets.CIFAR10_TEST_FILE]:
        entry = {
            "batch_label": name,
            "labels": rng.integers(0, 10, per_file).tolist(),
            "data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(per_file)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)


def test_cifar10_reads_the_on_disk_format(tmp_path):
    write_tiny_cifar(tmp_path / "cifar")
    cfg = compose_config(["data=cifar10", f"data.root={tmp_path / 'cifar'}", "data.download=false", "data.val_size=10"])
    splits = datasets.load(cfg.data)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50, 10, 12)
    assert splits.train.x.dtype == torch.uint8 and splits.train.x.shape[1:] == (3, 32, 32)
    # rows are stored channel-major: the first 1024 bytes are the red plane
    with open(tmp_path / "cifar" / datasets.CIFAR10_FOLDER / "test_batch", "rb") as f:
        raw = pickle.load(f)
    assert torch.equal(splits.test.x[0, 0].flatten(), torch.from_numpy(raw["data"][0, :1024]))

    value, summary = train(
        tmp_path / "run",
        ["data=cifar10", f"data.root={tmp_path / 'cifar'}", "data.download=false", "data.val_size=10",
         "batch_size=8", "epochs=1", "tensorboard=false", "quiet=true"],
    )  # fmt: skip
    assert summary["status"] == "completed"


def test_cifar10_missing_offline_fails_fast_with_directions(tmp_path):
    cfg = compose_config(["data=cifar10", f"data.root={tmp_path}", "data.download=false"])
    with pytest.raises(DataError, match=r"data=digits.*data=synthetic.*offline|data=digits / data=synthetic"):
        datasets.load(cfg.data)


class StepRecorder:
    """Snapshots of the model's weights before the first step and after every step."""

    def __init__(self):
        self.weights: list[dict[str, torch.Tensor]] = []
        self.losses: list[float] = []

    def on_batch_end(self, state, step, n_steps, losses) -> None:
        if not self.weights:
            raise AssertionError("the recorder must be armed with the initial weights first")
        self.weights.append({k: v.detach().clone() for k, v in state.model.state_dict().items()})
        self.losses.append(float(losses[step - 1]))

    def on_epoch_end(self, result, state) -> None:
        pass


def seeds_step(model: nn.Module, weights: dict, imgs: torch.Tensor, targets: torch.Tensor, lr: float):
    """One step of the seeds' script (seed 001/003): zero_grad, forward, loss, backward, SGD step."""
    model.load_state_dict(weights)
    optim = torch.optim.SGD(model.parameters(), lr=lr)  # plain SGD keeps no state between steps
    loss = nn.CrossEntropyLoss()
    result_loss = loss(model(imgs), targets)
    optim.zero_grad()
    result_loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    optim.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, result_loss.item(), grads


def test_loop_matches_the_seeds_hand_written_loop(tmp_path):
    """optimizer=sgd lr=0.01 batch_size=1 scheduler=constant takes the seeds' steps, one by one.

    Both loops get the identical float tensors (the engine's own batches), and every step
    is checked from the engine's weights before it, so rounding never compounds: each
    step's update ``lr * grad`` must match the seeds' to within fp32 rounding of one step.
    A recipe change (no zero_grad, the scheduler stepped instead of the optimizer, another
    lr, a skipped or repeated batch) moves a step by O(lr * |grad|) and fails.
    """
    lr, epochs = 0.01, 2
    overrides = [
        "data=synthetic", "data.train_size=12", "data.val_size=8", "data.test_size=8",
        "data.shuffle=false", "data.normalize=false", "model=tudui", "optimizer=sgd",
        f"lr={lr}", "batch_size=1", "scheduler=constant", f"epochs={epochs}", "seed=3",
        "channels_last=false", "tensorboard=false", "quiet=true", "plots=false",
    ]  # fmt: skip
    cfg = compose_config(overrides)
    torch.manual_seed(3)
    recorder = StepRecorder()
    recorder.weights.append({k: v.clone() for k, v in TuduiCNN().state_dict().items()})  # the seeds' init
    run(cfg, str(tmp_path), callbacks=[recorder])
    final = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    assert final.keys() == recorder.weights[0].keys()
    for name in final:
        assert torch.equal(final[name], recorder.weights[-1][name]), name

    # The engine's batches: with data.normalize=false they are x / 255 as float32, like ToTensor.
    data = load_data(cfg, torch.device("cpu"))  # as the runner builds it
    batches = [b for e in range(epochs) for b in data.train_batches(1, cfg.seed, e)]
    first = batches[0][0][0]
    torch.testing.assert_close(first, ToTensor()(Image.fromarray(data.train.x[0].permute(1, 2, 0).numpy())))
    assert len(recorder.weights) == len(batches) + 1 == epochs * 12 + 1

    eps = torch.finfo(torch.float32).eps
    tudui = TuduiCNN()
    for step, (imgs, targets) in enumerate(batches):
        before, after = recorder.weights[step], recorder.weights[step + 1]
        expected, loss, grads = seeds_step(tudui, before, imgs, targets, lr)
        assert recorder.losses[step] == pytest.approx(loss, rel=1e-5), step
        for name, want in expected.items():
            # One fp32 SGD step w - lr*g: w is rounded once (half an ulp of |w|), and g may
            # differ by reassociation in a different kernel: <= ~n*eps*|g| for a dot product
            # of n terms, bounded here by 1e-3 of the update (n <= 1600 terms, eps 1.2e-7:
            # 2e-4). A missing zero_grad, a skipped step or a wrong lr differs by ~|lr*g|.
            update = lr * grads[name].abs()
            tol = 2 * eps * torch.maximum(before[name].abs(), want.abs()) + 1e-3 * update.max()
            diff = (after[name] - want).abs()
            assert bool((diff <= tol).all()), (step, name, float(diff.max()), float(tol.max()))
            # and the step really moved the weights as the seeds' script does
            assert torch.equal(before[name], after[name]) == torch.equal(before[name], want), (step, name)


def test_steplr_gives_the_documented_lr_sequence(tmp_path):
    # torch's StepLR example: lr = 0.05 for 2 epochs, then 0.005, then 0.0005 ...
    train(tmp_path, [*MICRO, "scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.1", "lr=0.05", "epochs=5"])
    import csv

    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005])


def test_onecycle_steps_per_batch(tmp_path):
    _, summary = train(tmp_path, [*MICRO, "scheduler=onecycle", "lr=0.1", "epochs=3", "batch_size=8"])
    import csv

    lrs = [float(r["lr"]) for r in csv.DictReader(open(tmp_path / "metrics.csv"))]
    # warms up within the first epoch: epoch 2 starts near the peak, far above the initial lr
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert lrs[1] > 5 * lrs[0]
    assert summary["status"] == "completed"


def test_adam_momentum_knob_is_beta1():
    from hydra.utils import instantiate

    cfg = compose_config(["optimizer=adam", "momentum=0.8", "lr=0.003"])
    opt = instantiate(cfg.optimizer)([nn.Parameter(torch.zeros(1))])
    assert opt.param_groups[0]["betas"] == (0.8, 0.999) and opt.param_groups[0]["lr"] == 0.003


@pytest.mark.slow
def test_digits_reaches_90_percent(tmp_path):
    _, summary = train(
        tmp_path, ["data=digits", "optimizer=adam", "lr=1e-3", "epochs=5", "tensorboard=false", "quiet=true"]
    )
    assert summary["test"]["acc"] >= 0.90, summary["test"]
