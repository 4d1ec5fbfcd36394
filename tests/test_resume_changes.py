"""What a resume may change and what it can read: a different logger is harmless (it cannot
alter the numbers already trained), and a folder saved before datasets had ``data._target_``
either resumes with the loader of its ``data.name`` or is refused in one line."""

from __future__ import annotations

import json

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import TINY, compose_config
from optimlab.errors import ConfigError
from optimlab.run.folder import RunFolder
from optimlab.run.resume import prepare
from optimlab.run.runner import run

BASE = [*TINY, "model=lenet", "data.image_size=16", "data.channels=1", "logger=none"]


def first_epoch(tmp_path):
    source = tmp_path / "source"
    run(compose_config(BASE), str(source))
    return source


def resume(tmp_path, source, *overrides, into="resumed"):
    args = [f"resume={source}", "epochs=2", *overrides]
    plan = prepare(compose_config([*BASE, *args]), args)
    run(plan.config, str(tmp_path / into), overrides=args, resume=plan)
    return plan, json.loads((tmp_path / into / "summary.json").read_text())


def test_a_resume_may_change_only_the_logger(tmp_path):
    source = first_epoch(tmp_path)
    plan, summary = resume(tmp_path, source, "logger=[csv,tensorboard]", "tensorboard=true")
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert {k.split(".")[0] for k in summary["resumed_from"]["changed"]} == {"epochs", "logger", "tensorboard"}
    assert set(plan.config.logger) == {"csv", "tensorboard"}
    rows = RunFolder(tmp_path / "resumed").read_log_table()
    assert [r["epoch"] for r in rows] == ["2", "end"]  # the new logger logs from where the run goes on
    assert list((tmp_path / "resumed").glob("events.out.tfevents.*"))
    with pytest.raises(ConfigError, match="lr: saved 0.01, now 0.5"):  # a key that changes the numbers still may not
        resume(tmp_path, source, "logger=csv", "lr=0.5", into="refused")


def strip_data_target(folder, name=None):
    """Make ``folder`` look like one written before ``data._target_`` existed (its checkpoint's
    two copies of the config and .hydra/config.yaml)."""
    rf = RunFolder(folder)
    payload = rf.load_checkpoint().payload
    cfg = OmegaConf.create(payload["config_yaml"])
    del cfg.data["_target_"]
    if name:
        cfg.data.name = name
    payload["config_yaml"] = OmegaConf.to_yaml(cfg)
    payload["config"] = OmegaConf.to_container(cfg, resolve=True)
    rf.write_checkpoint(payload)
    rf.hydra_file("config.yaml").parent.mkdir(exist_ok=True)
    rf.hydra_file("config.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert "_target_" not in yaml.safe_load(rf.hydra_file("config.yaml").read_text())["data"]


def test_a_folder_saved_before_data_targets_resumes(tmp_path):
    source = first_epoch(tmp_path)
    strip_data_target(source)
    plan, summary = resume(tmp_path, source)
    assert plan.config.data._target_ == "optimlab.engine.data.make_synthetic"  # conf/data/synthetic.yaml's
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert "data._target_" not in summary["resumed_from"]["changed"]


def test_a_folder_saved_before_data_targets_with_an_unknown_dataset_is_one_line(tmp_path):
    source = first_epoch(tmp_path)
    strip_data_target(source, name="my_old_dataset")
    with pytest.raises(ConfigError) as e:
        resume(tmp_path, source)
    message = str(e.value)
    assert "\n" not in message and "data._target_" in message and "my_old_dataset" in message
    assert not (tmp_path / "resumed").exists()  # refused before any work


def test_a_run_of_a_preset_resumes_with_the_presets_own_override(tmp_path):
    """A sweep's continuation passes the trial's overrides again, `sweep=<preset>` among them:
    a group of the _global_ package is no key of the config, so it changes nothing to compare."""
    preset = [*BASE, "sweep=lr_momentum_fast"]
    source = tmp_path / "source"
    run(compose_config(preset), str(source))
    args = [f"resume={source}", "epochs=2", "sweep=lr_momentum_fast"]
    plan = prepare(compose_config([*BASE, *args]), args)
    assert "sweep" not in plan.config and plan.config.epochs == 2
    assert set(plan.changed) == {"epochs"}
