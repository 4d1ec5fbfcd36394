"""experiment= recipes and debug= modes: they compose, pass the checks and train."""

from __future__ import annotations

import json

import pytest

from conftest import compose_config
from optimlab.config.checks import training_split_size, validate
from optimlab.engine import data as datasets
from optimlab.run.folder import RunFolder
from optimlab.run.runner import run
from test_foundation import write_tiny_cifar


def test_seed_tudui_is_the_seeds_recipe():
    cfg = compose_config(["experiment=seed_tudui"])
    validate(cfg)
    assert cfg.model._target_.endswith("TuduiCNN") and cfg.data.name == "cifar10"
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.01 and cfg.optimizer.momentum == 0
    assert cfg.scheduler._target_.endswith("StepLR") and (cfg.scheduler.step_size, cfg.scheduler.gamma) == (30, 0.1)
    assert (cfg.batch_size, cfg.epochs) == (1, 20)
    assert not cfg.data.normalize and not cfg.data.shuffle and cfg.data.augment.crop_padding == 0
    assert compose_config(["experiment=seed_tudui", "batch_size=64"]).batch_size == 64  # the command line wins


@pytest.mark.slow
def test_fastnet_cifar10_recipe_and_debug_fast_train(tmp_path):
    cfg = compose_config(["experiment=fastnet_cifar10"])
    validate(cfg)
    assert cfg.model._target_.endswith("FastNet") and cfg.scheduler._target_.endswith("OneCycleLR")
    assert cfg.optimizer.nesterov and cfg.precision == "auto" and cfg.data.augment.flip

    write_tiny_cifar(tmp_path / "cifar", per_file=60)  # 300 training images
    overrides = ["experiment=fastnet_cifar10", "debug=fast", f"data.root={tmp_path / 'cifar'}", "data.download=false",
                 "data.val_size=20", "batch_size=16", "quiet=true", "device=cpu"]  # fmt: skip
    cfg = compose_config(overrides)
    validate(cfg)
    assert training_split_size(cfg) == 256 and cfg.epochs == 1 and not cfg.logger and not cfg.plots
    splits = datasets.load(cfg.data)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (256, 20, 60)
    run(cfg, str(tmp_path / "run"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1
    assert not (tmp_path / "run" / "curves.png").exists() and not list((tmp_path / "run").glob("events.out.*"))


@pytest.mark.slow
def test_debug_overfit_drives_the_training_loss_to_zero(tmp_path):
    cfg = compose_config(["debug=overfit", "data=synthetic", "data.noise=3.0", "model=relu_cnn", "optimizer=adam",
                          "lr=3e-3", "quiet=true", "device=cpu", "data.image_size=8", "data.channels=1"])  # fmt: skip
    assert cfg.data.limit == 64 and not cfg.data.shuffle and cfg.epochs == 60
    validate(cfg)
    run(cfg, str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 60
    assert summary["final"]["train_loss"] < 0.02, summary["final"]


def test_debug_profile_writes_a_chrome_trace_into_the_run_folder(tmp_path):
    cfg = compose_config(["debug=profile", "data=synthetic", "model=lenet", "data.image_size=16", "data.channels=1",
                          "batch_size=32", "quiet=true", "device=cpu", "profile.steps=3"])  # fmt: skip
    validate(cfg)
    assert cfg.epochs == 1 and cfg.data.limit == 1024 and not cfg.logger and cfg.profile.warmup == 1
    run(cfg, str(tmp_path))
    trace = json.loads((RunFolder(tmp_path).profile_trace_path).read_text())  # valid JSON, Chrome's trace format
    events = trace["traceEvents"]
    steps = sorted({e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")})
    assert steps == ["ProfilerStep#1", "ProfilerStep#2", "ProfilerStep#3"]  # the 3 traced steps, after 1 warm-up step
    assert any("conv" in e.get("name", "") for e in events)  # the model's own ops are in it
    assert all({"ph", "name"} <= set(e) for e in events)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


def test_profile_keys_are_checked(tmp_path):
    from optimlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^profile.steps=-1 .*>= 0") as e:
        validate(compose_config(["debug=profile", "profile.steps=-1"]))
    assert "\n" not in str(e.value)
    assert compose_config([]).profile.steps == 0  # no profiler unless asked
