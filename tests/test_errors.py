"""Bad input gets one clear error before any training, and nothing misleading is left behind.

Every case is ``python train.py ...`` (or ``-m``), run by Hydra's own main in the test's
process (``conftest.train_cli``); Ctrl-C is a real SIGINT to a real process.
"""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import CONF_DIR, ROOT, TINY, compose_config, start_python, train_cli
from optimlab.config import validate
from optimlab.errors import ConfigError

# (id, overrides, what the message must name)
CONFIG_CASES = [
    ("lr_negative", ["lr=-1"], ["lr=-1", "> 0"]),
    ("lr_not_a_number", ["lr=abc"], ["lr='abc'", "number"]),
    ("lr_nan", ["lr=nan"], ["lr=nan", "finite"]),
    ("momentum_one", ["momentum=1.0"], ["momentum=1.0", "[0, 1)"]),
    ("weight_decay_negative", ["weight_decay=-0.1"], ["weight_decay=-0.1", ">= 0"]),
    ("epochs_zero", ["epochs=0"], ["epochs=0", ">= 1"]),
    ("epochs_fractional", ["epochs=2.5"], ["epochs=2.5", "integer"]),
    ("batch_size_zero", ["batch_size=0"], ["batch_size=0", ">= 1"]),
    ("batch_size_too_large", ["batch_size=100000"], ["batch_size=100000", "256 images"]),
    ("seed_negative", ["seed=-1"], ["seed=-1", ">= 0"]),
    ("precision_unknown", ["precision=fp8"], ["precision='fp8'", "fp32", "bf16"]),
    ("deterministic_not_bool", ["deterministic=maybe"], ["deterministic='maybe'", "true or false"]),
    ("eval_batch_size_zero", ["eval_batch_size=0"], ["eval_batch_size=0", ">= 1"]),
    ("checkpoint_every_negative", ["checkpoint.every=-1"], ["checkpoint.every=-1", ">= 0"]),
    ("objective_metric_unknown", ["objective.metric=accuracy"], ["objective.metric='accuracy'", "val_acc"]),
    ("objective_direction_mismatch", ["objective.metric=val_loss"], ["objective.direction='maximize'", "minimize"]),
    ("steplr_step_size_zero", ["scheduler=step", "scheduler.step_size=0"], ["scheduler.step_size=0", ">= 1"]),
    ("steplr_gamma_zero", ["scheduler=step", "scheduler.gamma=0"], ["scheduler.gamma=0", "> 0"]),
    ("multistep_not_increasing", ["scheduler=multistep", "scheduler.milestones=[5,2]"], ["scheduler.milestones=[5, 2]", "increasing"]),
    ("onecycle_pct_start", ["scheduler=onecycle", "scheduler.pct_start=1.5"], ["scheduler.pct_start=1.5", "(0, 1)"]),
    ("plateau_factor", ["scheduler=plateau", "scheduler.factor=1.5"], ["scheduler.factor=1.5", "(0, 1)"]),
    ("plateau_monitor", ["scheduler=plateau", "scheduler.monitor=acc"], ["scheduler.monitor='acc'", "val_loss", "val_acc"]),
    ("scheduler_interval", ["scheduler.interval=weekly"], ["scheduler.interval='weekly'", "epoch", "batch"]),
    ("data_train_size_zero", ["data.train_size=0"], ["data.train_size=0", ">= 1"]),
    ("data_channels_zero", ["data.channels=0"], ["data.channels=0", ">= 1"]),
    ("lenet_image_too_small", ["model=lenet", "data.image_size=12"], ["data.image_size=12", ">= 16", "LeNet"]),
    ("tudui_image_too_small", ["model=tudui", "data.image_size=4"], ["data.image_size=4", ">= 8", "TuduiCNN"]),
    ("crop_padding_too_large", ["data.augment.crop_padding=40"], ["data.augment.crop_padding=40", "< data.image_size"]),
    ("cifar_channels", ["data=cifar10", "data.channels=1"], ["data.channels=1", "data=cifar10", "channels=3"]),
    ("device_type_unknown", ["device.type=tpu"], ["device.type='tpu'", "cpu", "cuda", "mps"]),
    ("nesterov_without_momentum", ["optimizer=nesterov", "momentum=0"], ["momentum=0", "nesterov", "> 0"]),
    ("adam_betas", ["optimizer=adam", "optimizer.betas=[0.9,1.5]"], ["optimizer.betas=[0.9, 1.5]", "[0, 1)"]),
    ("broken_interpolation", ["lr=${nope}"], ["lr='${nope}'", "cannot be resolved"]),
]

# Mistakes Hydra itself rejects while composing: its message plus optimlab's "did you mean".
HYDRA_CASES = [
    ("unknown_optimizer", ["optimizer=adamx"], ["Could not find 'optimizer/adamx'", "did you mean optimizer=adam?"]),
    ("unknown_scheduler", ["scheduler=stepp"], ["scheduler/stepp", "did you mean scheduler=step?"]),
    ("misspelled_key", ["momentun=0.5"], ["momentun", "did you mean momentum=0.5?"]),
    ("misspelled_nested_key", ["data.trian_size=10"], ["trian_size", "did you mean data.train_size=10?"]),
]

# Search spaces checked in-process, the way SweepChecks checks them before any trial
SPACE_CASES = [
    ("sweep_unknown_key", {"lrr": "interval(0.1,1)"}, ["'lrr' does not exist", "did you mean 'lr'"]),
    ("sweep_interval_reversed", {"lr": "interval(1,0.1)"}, ["interval needs low < high", "low=1.0", "high=0.1"]),
    ("sweep_log_low_zero", {"lr": "tag(log,interval(0,1))"}, ["log-scale", "low > 0", "low=0.0"]),
    ("sweep_out_of_range", {"momentum": "interval(0.5,1.5)"}, ["momentum=1.5", "[0, 1)"]),
    ("sweep_unknown_option", {"optimizer": "adam,adamx"}, ["'adamx' is not an option of optimizer", "did you mean 'adam'"]),
]

# End to end through `train.py -m`: nothing is launched
SWEEP_CASES = [
    ("sweep_unknown_key", ["hydra/sweeper=optuna", "lrr=interval(0.1,1)"], ["'lrr' does not exist", "did you mean 'lr'"]),
    ("sweep_unknown_option", ["optimizer=adam,adamx"], ["'adamx' is not an option of optimizer", "did you mean 'adam'"]),
    ("sweep_unknown_sampler_option", ["hydra/sweeper=optuna", "hydra/sweeper/sampler=tpee", "lr=interval(0.01,0.1)"], ["did you mean hydra/sweeper/sampler=tpe?"]),
    ("sweep_unknown_sampler_class", ["hydra/sweeper=optuna", "hydra.sweeper.sampler._target_=optuna.samplers.Nope", "lr=interval(0.01,0.1)"], ["optuna.samplers.Nope", "not a known sampler"]),
    ("sweep_base_invalid", ["lr=-1", "momentum=0.1,0.5"], ["every trial would fail", "lr=-1"]),
]


def assert_nothing_trained(result: subprocess.CompletedProcess, base: Path) -> None:
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Traceback" not in out, out  # one clear message, no traceback wall
    assert "epoch 1/" not in out, out
    for name in ("metrics.csv", "checkpoint.pt"):
        assert not list(base.rglob(name)), f"{name} written although the input was bad"
    for summary in base.rglob("summary.json"):
        assert json.loads(summary.read_text())["status"] == "invalid_config"


def _tiny_without(overrides: list[str]) -> list[str]:
    """TINY minus the keys ``overrides`` sets (and its data keys when another dataset is chosen)."""
    tiny = [a for a in TINY if not any(a.startswith(o.split("=")[0] + "=") for o in overrides)]
    if "data=cifar10" in overrides:
        tiny = [a for a in tiny if not a.startswith("data")]
    return tiny


@pytest.mark.parametrize("overrides,expected", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_is_named_in_one_line(overrides, expected):
    """validate() — what train.py calls once, before any data or model is built — rejects
    each mistake with one line naming the key, the value and what is allowed."""
    cfg = compose_config([*_tiny_without(overrides), *overrides])
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    message = str(caught.value)
    assert "\n" not in message, message
    for text in expected:
        assert text in message, f"{text!r} not in: {message}"
    assert "is not valid" in message or "cannot be resolved" in message
    assert caught.value.exit_code == 2


# End to end through train.py: a type mistake, a rule checked against the model, an interpolation.
E2E_CONFIG_CASES = ("lr_negative", "lenet_image_too_small", "broken_interpolation")


@pytest.mark.parametrize(
    "overrides,expected", [c[1:] for c in CONFIG_CASES if c[0] in E2E_CONFIG_CASES], ids=list(E2E_CONFIG_CASES)
)
def test_bad_config_fails_before_training(overrides, expected, tmp_path):
    result = train_cli(*_tiny_without(overrides), *overrides, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    for text in expected:
        assert text in out, f"{text!r} not in: {out}"
    assert "is not valid" in out or "cannot be resolved" in out
    assert_nothing_trained(result, tmp_path)


@pytest.mark.parametrize("overrides,expected", [c[1:] for c in HYDRA_CASES], ids=[c[0] for c in HYDRA_CASES])
def test_unknown_names_get_hydras_message_and_a_suggestion(overrides, expected, tmp_path):
    result = train_cli(*TINY, *overrides, cwd=tmp_path)
    out = result.stdout + result.stderr
    for text in expected:
        assert text in out, f"{text!r} not in: {out}"
    assert_nothing_trained(result, tmp_path)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("params,expected", [c[1:] for c in SPACE_CASES], ids=[c[0] for c in SPACE_CASES])
def test_bad_search_space_is_named_in_one_line(params, expected):
    from hydra import compose, initialize_config_dir

    from optimlab.config.sweeps import validate_search_space

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):  # group options need Hydra
        cfg = compose(config_name="config", overrides=TINY, return_hydra_config=True)
        with pytest.raises(ConfigError) as caught:
            validate_search_space(params, cfg)
    message = str(caught.value)
    assert "\n" not in message, message
    for text in expected:
        assert text in message, f"{text!r} not in: {message}"


@pytest.mark.parametrize("overrides,expected", [c[1:] for c in SWEEP_CASES], ids=[c[0] for c in SWEEP_CASES])
def test_bad_sweep_fails_before_any_trial(overrides, expected, tmp_path):
    result = train_cli("-m", *TINY, *overrides, cwd=tmp_path)
    out = result.stdout + result.stderr
    for text in expected:
        assert text in out, f"{text!r} not in: {out}"
    assert_nothing_trained(result, tmp_path)
    assert "Launching" not in out  # no trial was started


def test_bad_search_space_in_a_sweep_preset(tmp_path):
    """hydra.sweeper.params from a preset file (the usual way to write a search space)."""
    presets = tmp_path / "my_conf" / "sweep"
    presets.mkdir(parents=True)
    (presets / "bad.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /hydra/sweeper: optuna\n"
        "hydra:\n  sweeper:\n    n_trials: 2\n    params:\n"
        "      lr: tag(log, interval(0.5, 0.1))\n      momentum: interval(0.0, 0.9)\n"
    )
    result = train_cli("-m", "--config-dir", str(tmp_path / "my_conf"), "sweep=bad", *TINY, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert "search space lr=" in out and "low < high" in out, out
    assert_nothing_trained(result, tmp_path)


@pytest.mark.skipif(
    not (ROOT / "src" / "hydra_plugins" / "optimlab_sweeper" / "config.py").exists(), reason="no optimlab sweeper"
)
def test_unknown_pruner_option(tmp_path):
    args = ["hydra/sweeper=optimlab", "hydra/sweeper/pruner=mediann", "lr=interval(0.01,0.1)"]
    result = train_cli("-m", *TINY, *args, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert "mediann" in out and "did you mean hydra/sweeper/pruner=median?" in out, out
    assert_nothing_trained(result, tmp_path)


# --------------------------------------------------------------------------- devices and data


@pytest.mark.slow
def test_absent_device_names_what_is_available(tmp_path):
    from optimlab.engine.devices import available_devices

    absent = [d for d in ("mps", "cuda") if d not in available_devices()]
    if not absent:
        pytest.skip("every device type is present here")
    device = absent[0]
    result = train_cli(*TINY, f"device={device}", cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert f"device={device}" in out and "not present" in out, out
    assert "available: " + ", ".join(available_devices()) in out, out
    assert_nothing_trained(result, tmp_path)


def test_resolve_device_errors():
    from optimlab.errors import DeviceError
    from optimlab.engine.devices import available_devices, resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in available_devices()
    with pytest.raises(DeviceError, match="device=tpu .*not present"):  # validate() names the allowed types
        resolve_device("tpu")
    for kind in ("cuda", "mps"):
        if kind not in available_devices():
            with pytest.raises(DeviceError, match=f"available: {', '.join(available_devices())}"):
                resolve_device(kind)


def _write_cifar(folder: Path, corrupt: str) -> None:
    folder.mkdir(parents=True)
    good = {"data": [[0] * 3072] * 4, "labels": [0, 1, 2, 3]}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump(good, f)
    (folder / corrupt).write_bytes(b"\x80\x04 this is not a pickle")


@pytest.mark.slow
def test_corrupt_dataset_file(tmp_path):
    _write_cifar(tmp_path / "data" / "cifar-10-batches-py", corrupt="data_batch_3")
    args = ["data=cifar10", "data.download=false", "data.val_size=4", "batch_size=4", "epochs=1", "quiet=true"]
    result = train_cli(*args, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "data_batch_3" in out and "corrupt" in out and "download it again" in out, out
    assert_nothing_trained(result, tmp_path)
    (summary,) = tmp_path.glob("outputs/*/*/summary.json")
    assert json.loads(summary.read_text())["status"] == "invalid_config"


@pytest.mark.slow
def test_missing_dataset_offline_fails_fast(tmp_path):
    t0 = time.perf_counter()
    result = train_cli("data=cifar10", "data.download=false", "epochs=1", "quiet=true", cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "CIFAR-10 is not in" in out and "data=digits" in out, out
    assert time.perf_counter() - t0 < 60
    assert_nothing_trained(result, tmp_path)


# --------------------------------------------------------------------------- during training


@pytest.mark.slow
def test_divergence_stops_with_status_diverged(tmp_path):
    result = train_cli(*TINY, "lr=1e12", "epochs=3", cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if "training diverged" in line]
    assert len(lines) == 1, out  # one line says why
    assert "epoch" in lines[0] and "step" in lines[0] and "last finite loss" in lines[0]
    (summary_path,) = tmp_path.glob("outputs/*/*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "diverged"
    d = summary["divergence"]
    assert d["epoch"] == 1 and d["step"] >= 1 and not (d["loss"] == d["loss"] and abs(d["loss"]) < float("inf"))
    assert summary["epochs_completed"] == 0


@pytest.mark.slow
def test_ctrl_c_saves_state_and_says_interrupted(tmp_path):
    args = [*TINY, "epochs=1000", "data.train_size=512", "checkpoint.every=1", "plots=false"]
    proc = start_python(*args, cwd=tmp_path)  # a real process: SIGINT from outside
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("outputs/*/*/checkpoint.pt")):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no epoch finished in time"
            time.sleep(0.1)
        time.sleep(0.3)  # land somewhere in a later epoch
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    assert "interrupted (Ctrl-C)" in out, out

    (run_dir,) = {p.parent for p in tmp_path.glob("outputs/*/*/summary.json")}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    done = summary["epochs_completed"]
    assert 1 <= done < 1000
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == done  # the state after the last finished epoch is on disk
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + done
    assert not list(run_dir.glob(".*.tmp")) and not list(run_dir.glob("*.tmp")), "half-written files left"


def test_a_tilde_path_gets_a_one_line_hint(tmp_path):
    result = train_cli("data=image_folder", "data.root=~/pets", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "hint: Hydra does not expand ~ in data.root=~/pets: write data.root=$HOME/pets (unquoted: the shell "
        "expands $HOME) or an absolute path"
    ), result.stderr[-2000:]
