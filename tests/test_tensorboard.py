"""TensorBoard event files in the run folder: per-epoch scalars, hparams, switch-off."""

from __future__ import annotations

import pytest
from conftest import TINY, compose_config

from optimlab.run.runner import run

SMALL = [o for o in TINY if not o.startswith(("epochs=", "tensorboard="))] + [
    "model=lenet", "data.image_size=16", "data.channels=1",
]  # fmt: skip


def events(folder):
    return sorted(folder.glob("events.out.tfevents.*"))


def test_scalars_and_hparams_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    overrides = [*SMALL, "epochs=3", "tensorboard=true", "optimizer=momentum", "lr=0.02"]
    run(compose_config(overrides), str(tmp_path), overrides=overrides)
    assert len(events(tmp_path)) == 1  # one writer, in the run folder itself

    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {"train/loss", "val/loss", "val/acc", "lr", "perf/images_per_s", "perf/epoch_s", "objective",
                "test/acc", "test/loss"}  # fmt: skip
    assert expected <= tags
    for tag in ("train/loss", "val/loss", "val/acc", "lr", "objective"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3], tag
    assert [e.value for e in acc.Scalars("lr")] == pytest.approx([0.02] * 3)
    assert [e.step for e in acc.Scalars("test/acc")] == [3]

    # the values are the ones in metrics.csv
    import csv

    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [e.value for e in acc.Scalars("val/acc")] == pytest.approx([float(r["val_acc"]) for r in rows])
    best = [max(float(r["val_acc"]) for r in rows[: i + 1]) for i in range(3)]
    assert [e.value for e in acc.Scalars("objective")] == pytest.approx(best)

    # HParams plugin: experiment, session start (with the hyperparameters) and end (success)
    content = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(content)
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["optimizer"].string_value == "momentum"  # the override's choice name
    assert hp["lr"].number_value == pytest.approx(0.02)
    assert hp["model"].string_value == "lenet"
    assert hp["scheduler"].string_value == "ConstantLR"  # from the config when not overridden
    assert hp["batch_size"].number_value == 32
    assert hp["momentum"].number_value == pytest.approx(0.9)  # optimizer=momentum uses the knob
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
    assert end.session_end_info.status == 1  # STATUS_SUCCESS
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"objective", "val/acc", "test/acc"}


def test_switched_off(tmp_path):
    overrides = [*SMALL, "epochs=1", "tensorboard=false"]
    run(compose_config(overrides), str(tmp_path), overrides=overrides)
    assert (tmp_path / "summary.json").exists()
    assert events(tmp_path) == []


def test_several_objectives_are_all_logged(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    overrides = [*SMALL, "epochs=2", "tensorboard=true", "objective.metrics=[val_loss,train_seconds]"]
    run(compose_config(overrides), str(tmp_path), overrides=overrides)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    import json

    goal = json.loads((tmp_path / "summary.json").read_text())["objective"]
    # an epoch metric: its best so far after every epoch; a run metric: its value at the end
    assert [e.step for e in acc.Scalars("objective/val_loss")] == [1, 2]
    assert acc.Scalars("objective/val_loss")[-1].value == pytest.approx(goal["values"][0])
    assert [e.step for e in acc.Scalars("objective/train_seconds")] == [2]
    assert acc.Scalars("objective/train_seconds")[-1].value == pytest.approx(goal["values"][1])
    assert "objective" not in acc.Tags()["scalars"]
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    listed = {m.name.tag for m in experiment.metric_infos}
    assert {"objective/val_loss", "objective/train_seconds"} <= listed
