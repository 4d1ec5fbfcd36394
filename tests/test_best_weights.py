"""The best validation epoch's weights: kept in best.pt next to the checkpoint, recorded in every
checkpoint so a resumed run continues from them, and the weights the test figures come from
(``test_on``: best by default, last, or both)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_config
from optimlab.engine.training import LoopConfig, evaluate
from optimlab.run.folder import RunFolder
from optimlab.run.resume import prepare
from optimlab.run.runner import load_data, run

# 384 digits, a small LeNet: its validation accuracy peaks at epoch 3 of 4 (0.806, then 0.771)
DIGITS = ["data=digits", "data.image_size=16", "+data.limit=384", "model=lenet", "optimizer=adam", "lr=1e-2",
          "batch_size=16", "epochs=4", "logger=none", "quiet=true", "plots=false", "tensorboard=false"]  # fmt: skip


def train(run_dir: Path, *overrides: str) -> dict:
    run(compose_config([*DIGITS, *overrides]), str(run_dir))
    return json.loads((run_dir / "summary.json").read_text())


def evaluated(cfg, state_dict: dict) -> tuple[float, float]:
    """The test split's loss and accuracy of ``state_dict``, the model and data built as the runner builds them."""
    data = load_data(cfg, torch.device("cpu"))
    model = instantiate(cfg.model).to(memory_format=torch.channels_last)
    model.load_state_dict(state_dict)
    loop = LoopConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, eval_batch_size=cfg.eval_batch_size)
    return evaluate(model, data, "test", loop)


def test_best_weights_are_kept_and_the_test_figures_come_from_them(tmp_path):
    summary = train(tmp_path / "both", "test_on=both")
    folder = RunFolder(tmp_path / "both", create=False)
    best = folder.load_best()
    goal = summary["objective"]
    assert goal["best_epoch"] == 3 and summary["epochs_completed"] == 4  # the best epoch is not the last
    assert best["epoch"] == summary["best_weights"]["epoch"] == goal["best_epoch"]
    assert (best["metric"], best["direction"], best["value"]) == ("val_acc", "maximize", goal["value"])
    assert best["inputs"]["classes"] == [str(i) for i in range(10)] and best["inputs"]["channels"] == 1
    # the reported test figures are those of best.pt's weights; test_last those of the checkpoint's
    cfg = compose_config([*DIGITS, "test_on=both"])
    assert summary["test_weights"] == "best"
    assert summary["test"] == {**dict(zip(("loss", "acc"), evaluated(cfg, best["model"]))), "weights": "best", "epoch": 3}
    last = folder.load_checkpoint().payload["model"]
    assert summary["test_last"] == {**dict(zip(("loss", "acc"), evaluated(cfg, last))), "weights": "last", "epoch": 4}
    assert summary["test"]["loss"] != summary["test_last"]["loss"]
    # the checkpoint (epoch 4) records the best so far with its own copy of epoch 3's weights
    record = folder.load_checkpoint().best
    assert record["epoch"] == 3 and all(torch.equal(record["model"][k], v) for k, v in best["model"].items())

    only_last = train(tmp_path / "last", "test_on=last")
    assert only_last["test_weights"] == "last" and "test_last" not in only_last
    assert only_last["test"] == summary["test_last"]  # the same run, tested on its last epoch's weights
    assert compose_config(DIGITS).test_on == "best"  # the default


@pytest.mark.slow
def test_a_resumed_run_continues_from_the_recorded_best(tmp_path):
    whole = train(tmp_path / "whole", "epochs=5")
    train(tmp_path / "first", "epochs=4")  # its checkpoint (epoch 4) holds epoch 3's weights as the best
    assert RunFolder(tmp_path / "first", create=False).load_checkpoint().best["model"] is not None
    args = [f"resume={tmp_path / 'first'}", "epochs=5"]
    plan = prepare(compose_config([*DIGITS, *args]), args)
    run(plan.config, str(tmp_path / "resumed"), overrides=args, resume=plan)
    resumed = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert resumed["best_weights"] == whole["best_weights"] and resumed["test"] == whole["test"]
    a, b = (RunFolder(tmp_path / d, create=False).load_best() for d in ("whole", "resumed"))
    assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], v) for k, v in b["model"].items())


def test_test_on_is_checked():
    from optimlab.config.checks import validate
    from optimlab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^test_on='first' is not valid: must be one of best, last, both"):
        validate(compose_config([*DIGITS, "test_on=first"]))


def test_the_best_epoch_is_chosen_by_the_first_epoch_metric_among_the_objectives():
    from optimlab.objective import selection

    assert selection({"metric": "val_loss", "direction": "minimize"}) == ("val_loss", "minimize")
    assert selection({"metric": "val_acc", "direction": "maximize", "metrics": ["train_seconds", "val_acc"],
                      "directions": ["minimize", "maximize"]}) == ("val_acc", "maximize")  # fmt: skip
    # only run metrics (one value per run): the validation loss picks the weights
    assert selection({"metric": "val_acc", "direction": "maximize", "metrics": ["train_seconds", "n_parameters"]}) == (
        "val_loss", "minimize")  # fmt: skip
