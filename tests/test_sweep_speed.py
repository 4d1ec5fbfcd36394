"""What makes a sweep fast: the in-process dataset cache, workers that agree on hashes
(Hyperband brackets), and the successive-halving preset that prunes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest
import torch

from conftest import TINY, train_cli
from optimlab.engine import data as datasets
from optimlab.sweeping import workers

DIGITS = {"_target_": "optimlab.engine.data.load_digits", "name": "digits", "channels": 1, "image_size": 16,
          "num_classes": 10, "test_size": 360, "val_size": 144, "split_seed": 0}  # fmt: skip


def test_the_data_cache_serves_the_same_tensors_for_the_same_entry_only():
    datasets._LOADED.clear()
    first = datasets.load_cached(DIGITS)
    again = datasets.load_cached(dict(reversed(DIGITS.items())))  # key order does not matter
    assert again is first
    fresh = datasets.load(DIGITS)
    for a, b in ((first.train, fresh.train), (first.val, fresh.val), (first.test, fresh.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)

    other = datasets.load_cached({**DIGITS, "split_seed": 1})  # another entry: loaded, not served
    assert other is not first and not torch.equal(other.val.y, first.val.y)
    assert len(datasets.load_cached({**DIGITS, "val_size": 100}).val) == 100
    assert datasets.load_cached(DIGITS) is not first  # one entry kept: the first was replaced


def test_digits_read_without_sklearn_are_sklearns_digits():
    from sklearn.datasets import load_digits

    images, target = datasets.read_sklearn_digits()
    bunch = load_digits()
    assert (images == bunch.images).all() and (target == bunch.target).all() and images.shape == (1797, 8, 8)


BRACKETS = """
import json, types, optuna
pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)
study = optuna.create_study(study_name="lr_momentum", direction="maximize", pruner=pruner)
pruner._try_initialization(study)
print(json.dumps({"brackets": [pruner._get_bracket_id(study, types.SimpleNamespace(number=n)) for n in range(60)],
                  "hash": hash("lr_momentum_7")}))
"""


def _worker_output(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", BRACKETS], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_two_worker_processes_put_every_trial_in_the_same_hyperband_bracket():
    base = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    env = workers.child_env(base)
    assert env["PYTHONHASHSEED"] == workers.HASH_SEED and env[workers.PARENT_ENV] == str(os.getpid())
    a, b = _worker_output(env), _worker_output(env)
    assert a == b  # the same bracket for each trial, and the same hash() of the names it is derived from
    assert len(set(a["brackets"])) == 3  # 9 epochs, factor 3: three brackets, all in use
    assert workers.child_env({**base, "PYTHONHASHSEED": "123"})["PYTHONHASHSEED"] == "123"  # the user's choice stays


@pytest.mark.slow
def test_the_fast_preset_prunes_and_writes_no_per_trial_plots(tmp_path):
    # lr from hopeless (1e-6: chance accuracy after an epoch) to good: of 6 trials, those
    # that are not in the top third after epoch 1 must stop there
    tiny = [a for a in TINY if a.split("=")[0] not in ("plots", "tensorboard", "epochs")]  # the preset's own
    args = ["-m", "sweep=lr_momentum_fast", *tiny, "epochs=3", "model=lenet", "hydra.sweeper.n_trials=6",
            "hydra.sweeper.plots=false", "lr=tag(log, interval(1e-6, 0.3))", "hydra.sweeper.study_name=s",
            "hydra.sweeper.max_failures=null", "hydra.sweeper.n_workers=1"]  # fmt: skip  (one worker: its SQLite file)
    proc = train_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'multirun' / 's' / 'optuna.db'}")
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    assert "PRUNED" in states and "COMPLETE" in states and len(trials) >= 6, states
    assert 1 in trials[0].intermediate_values  # values from epoch 1 of the first trial
    for t in trials:
        if t.state.name == "PRUNED":  # stopped before its last epoch: never pruned once trained in full
            assert max(t.intermediate_values) < 3
        folder = tmp_path / "multirun" / "s" / f"trial_{t.number:04d}"
        if t.state.name != "FAIL":  # a diverged trial stops at its first NaN step, before any checkpoint
            assert (folder / "metrics.csv").is_file() and (folder / "checkpoint.pt").is_file()
        assert not (folder / "curves.png").exists() and not list(folder.glob("events.out.*"))
        durations = json.loads((folder / "summary.json").read_text())["durations"]
        assert {"data_s", "build_s", "steps_s", "val_s", "checkpoint_s", "test_s"} <= set(durations)
