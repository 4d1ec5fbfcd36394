"""Packed trials (hydra.sweeper.pack): real multiruns of train.py in subprocesses on tiny
synthetic data, compared trial by trial with the same sweep run unpacked.

Tolerance: a packed trial's fp32 math differs from the same trial alone only in the order
of reductions (the engine batches the pack's forward and backward passes), which moves
losses by ~1e-4 relative over a few tiny epochs; values and metrics are compared to that
(rel=1e-4), and states (COMPLETE/PRUNED/FAIL) must be equal.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from conftest import run_in_process, train_cli

from optimlab.config.sweeps import check_pack
from optimlab.errors import SweepConfigError
from optimlab.sweeping.packing import groups, is_packable, pack_size, shape_key

EPOCHS = 3
TINY = [
    "model=lenet", "data=synthetic", "data.train_size=64", "data.val_size=32", "data.test_size=32",
    "data.image_size=16", "data.channels=1", "data.noise=0.2", "tensorboard=false", "quiet=true", "plots=false",
    f"epochs={EPOCHS}", "optimizer=momentum", "momentum=0.9",
]  # fmt: skip
# 8 trials: lr=1e4 diverges at batch 16 (FAIL) and is pruned at 32; lr=0.001 and lr=0.03 at
# batch 32 are pruned too (val_acc below 0.1 after epoch 1). lr=0.1 at batch 16 leaves the
# band upward only at epoch 3, its last (val_acc 0.34, 0.59, 0.75): the pruner would prune
# it there, and the rule keeps it. The threshold pruner decides from the trial's own value
# alone, so a packed and an unpacked sweep prune the same trials whatever the order they
# finish in.
LOWER, UPPER = 0.1, 0.65
SPACE = [
    "lr=choice(0.001,0.03,0.1,10000.0)", "batch_size=choice(16,32)", "hydra/sweeper/sampler=grid",
    "hydra.sweeper.n_trials=8", "hydra.sweeper.plots=false", "hydra/sweeper/pruner=threshold",
    f"hydra.sweeper.pruner.lower={LOWER}", f"hydra.sweeper.pruner.upper={UPPER}", "hydra.sweeper.pruner.n_warmup_steps=1",
]  # fmt: skip
REL = 1e-4
# Hydra's own job callback: it logs each job's JobReturn, so the packed trials' jobs show theirs
LOG_JOB_RETURN = "+hydra.callbacks.job_return._target_=hydra.experimental.callbacks.LogJobReturnCallback"


def sweep(cwd, name, *args, timeout=300):
    return train_cli("-m", "hydra/sweeper=optimlab", f"hydra.sweep.dir=multirun/{name}", *TINY, *SPACE, *args,
                     cwd=cwd, timeout=timeout)  # fmt: skip


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def load(cwd, name):
    return optuna.load_study(study_name="optimlab", storage=f"sqlite:///{cwd}/multirun/{name}/optuna.db")


def by_params(study):
    return {(t.params["lr"], t.params["batch_size"]): t for t in study.trials}


def final(trial) -> dict:
    """The last epoch's metrics in the trial's summary.json (empty for a trial with none)."""
    return json.loads((Path(trial.user_attrs["run_dir"]) / "summary.json").read_text()).get("final") or {}


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """The same 8 trials packed (pack=4) and unpacked (pack=auto, which on a CPU does not pack)."""
    cwd = tmp_path_factory.mktemp("packed")
    packed, auto = sweep(cwd, "packed", "hydra.sweeper.pack=4", LOG_JOB_RETURN), sweep(cwd, "auto", "hydra.sweeper.pack=auto")
    ok(packed)
    ok(auto)
    return cwd, packed, auto


@pytest.mark.slow
def test_packed_trials_equal_unpacked_ones(sweeps):
    cwd, _, _ = sweeps
    packed, alone = by_params(load(cwd, "packed")), by_params(load(cwd, "auto"))
    assert len(packed) == len(alone) == 8
    for params, t in packed.items():
        u = alone[params]
        assert t.state == u.state, params
        if t.value is not None or u.value is not None:
            assert t.value == pytest.approx(u.value, rel=REL), params
        assert t.intermediate_values.keys() == u.intermediate_values.keys(), params
        for step, v in t.intermediate_values.items():
            assert v == pytest.approx(u.intermediate_values[step], rel=REL), (params, step)
        assert t.user_attrs.get("status") == u.user_attrs.get("status"), params
        mine, theirs = final(t), final(u)
        assert mine.keys() == theirs.keys(), params
        for key in ("train_loss", "val_loss", "val_acc"):
            if key in mine and math.isfinite(theirs[key]):
                assert mine[key] == pytest.approx(theirs[key], rel=REL), (params, key)
    states = {t.state.name for t in packed.values()}
    assert {"COMPLETE", "PRUNED", "FAIL"} <= states
    (diverged,) = [t for t in packed.values() if t.state.name == "FAIL"]
    assert diverged.params == {"lr": 10000.0, "batch_size": 16}
    assert diverged.user_attrs["fail_reason"].startswith("Diverged: ")


def test_the_pruning_rule_never_prunes_after_the_last_epoch():
    """One rule for solo and packed trials (``PruningCallback.for_run``): a pruner that
    would prune every epoch prunes before the last one, never at it."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from optimlab.errors import Pruned
    from optimlab.sweeping.pruning import PruningCallback

    cfg = OmegaConf.create({"epochs": 3, "objective": {"metric": "val_acc"}})
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    callback = PruningCallback.for_run(study.ask(), cfg)
    with pytest.raises(Pruned, match="after epoch 2"):
        callback.on_epoch_end(SimpleNamespace(epoch=2, val_acc=0.5), None)
    callback.on_epoch_end(SimpleNamespace(epoch=3, val_acc=0.5), None)  # the last epoch: no Pruned


def test_every_trial_gets_its_pruning_callback_from_the_one_rule():
    """The packed path once built its callback without the last epoch and pruned finished
    trials; every PruningCallback of a run now comes from ``for_run``."""
    src = Path(__file__).resolve().parents[1] / "src" / "optimlab"
    built = [f for f in src.rglob("*.py") if "PruningCallback(" in f.read_text()]
    assert built == [], built


@pytest.mark.slow
def test_a_packed_trial_is_never_pruned_at_its_last_epoch(sweeps):
    """A trial whose last epoch's value is outside the pruner's band would be pruned there; packed
    or not, it completes (the one rule, ``PruningCallback.for_run``), and every pruned trial was
    pruned before its last epoch."""
    cwd, _, _ = sweeps
    for name in ("packed", "auto"):
        trials = load(cwd, name).trials
        at_the_end = [t for t in trials if EPOCHS in t.intermediate_values]
        outside = [t for t in at_the_end if not LOWER <= t.intermediate_values[EPOCHS] <= UPPER]
        assert outside, f"{name}: no trial the pruner would prune at its last epoch"
        assert {t.state.name for t in at_the_end} == {"COMPLETE"}, name
        assert all(max(t.intermediate_values) < EPOCHS for t in trials if t.state.name == "PRUNED"), name


@pytest.mark.slow
def test_packs_never_mix_shape_changing_keys_and_auto_does_not_pack_on_cpu(sweeps):
    cwd, packed_proc, auto_proc = sweeps
    study = load(cwd, "packed")
    by_number = {t.number: t for t in study.trials}
    packs = [t.user_attrs["pack"] for t in study.trials if "pack" in t.user_attrs]
    assert packs, "no trial was packed"
    for pack in packs:
        assert len(pack) > 1
        assert len({by_number[n].params["batch_size"] for n in pack}) == 1, pack
    log = packed_proc.stdout + packed_proc.stderr
    assert "slower than one after another on a CPU" in log
    # pack=auto on a CPU: one line says so, no trial is packed
    assert "hydra.sweeper.pack=auto on cpu: 1 trial(s) at a time" in auto_proc.stdout + auto_proc.stderr
    assert not any("pack" in t.user_attrs for t in load(cwd, "auto").trials)


@pytest.mark.slow
def test_each_packed_trial_folder_is_a_complete_run_folder(sweeps):
    cwd, _, _ = sweeps
    root = cwd / "multirun" / "packed"
    with open(root / "trials.csv") as f:
        rows = {int(r["number"]): r for r in csv.DictReader(f)}
    expected_status = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "diverged"}
    for t in load(cwd, "packed").trials:
        folder = root / f"trial_{t.number:04d}"
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"] == expected_status[t.state.name], t.number
        assert summary["overrides"][:2] == [f"lr={t.params['lr']}", f"batch_size={t.params['batch_size']}"]
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            assert (folder / ".hydra" / name).is_file(), (t.number, name)
        assert (folder / "train.log").is_file()
        assert rows[t.number]["state"] == t.state.name
        if t.state.name == "FAIL":
            continue  # diverged in its first epoch: nothing finished to keep
        with open(folder / "metrics.csv") as f:
            assert len(list(csv.DictReader(f))) == summary["epochs_completed"] == len(t.intermediate_values)
        assert (folder / "checkpoint.pt").is_file()
        if t.state.name == "COMPLETE":
            assert summary["objective"]["value"] == pytest.approx(t.value)
            assert "test" in summary
            # tested like a solo run: on the best epoch's weights, kept in best.pt
            assert summary["test_weights"] == "best" and (folder / "best.pt").is_file()
            assert summary["test"]["epoch"] == summary["best_weights"]["epoch"] == summary["objective"]["best_epoch"]
            # the trial was a Hydra job: the job callbacks got its JobReturn
            assert f"Succeeded with return value: {t.value}" in (folder / "train.log").read_text()


@pytest.mark.slow
def test_a_packed_trial_folder_resumes_and_reruns_as_a_solo_run(sweeps):
    cwd, _, _ = sweeps
    (best,) = [t for t in load(cwd, "packed").trials if t.state.name == "COMPLETE"][:1]
    source = cwd / "multirun" / "packed" / f"trial_{best.number:04d}"
    proc = train_cli(f"resume={source}", f"epochs={EPOCHS + 1}", "hydra.run.dir=outputs/resumed", cwd=cwd, timeout=120)
    ok(proc)
    summary = json.loads((cwd / "outputs" / "resumed" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["epochs_completed"] == EPOCHS + 1
    assert summary["resumed_from"]["epoch"] == EPOCHS
    # re-run from its folder alone, from scratch: the numbers the trial had in its pack
    proc = run_in_process([str(source), "hydra.run.dir=outputs/rerun"], cwd=cwd, module="optimlab.rerun")
    ok(proc)
    rerun = json.loads((cwd / "outputs" / "rerun" / "summary.json").read_text())
    assert rerun["status"] == "completed"
    assert rerun["objective"]["value"] == pytest.approx(best.value, rel=REL)
    for key in ("train_loss", "val_loss"):
        assert rerun["final"][key] == pytest.approx(final(best)[key], rel=REL)


@pytest.mark.slow
def test_run_packed_matches_runs_alone_and_trains_unpackable_runs_one_after_another(tmp_path, caplog):
    """In-process: two LeNets with different lr share a pack; a third model cannot join it."""
    from conftest import compose_config

    from optimlab.run.packed import run_packed
    from optimlab.run.runner import run

    micro = [*(o for o in TINY[1:] if not o.startswith("epochs=")), "epochs=1", "batch_size=16", "checkpoint.every=0"]
    cfgs = [compose_config(["model=lenet", *micro, f"lr={lr}"]) for lr in (0.03, 0.1)]
    alone = [run(cfg, str(tmp_path / f"alone{i}")) for i, cfg in enumerate(cfgs)]
    dirs = [str(tmp_path / f"packed{i}") for i in range(2)]
    assert run_packed(cfgs, dirs, [[], []], [[], []]) == pytest.approx(alone, rel=REL)
    for i, d in enumerate(dirs):  # the test figures come from the same (best) weights as alone
        packed, solo = (json.loads((tmp_path / f / "summary.json").read_text()) for f in (d, f"alone{i}"))
        assert packed["test"]["weights"] == solo["test"]["weights"] == "best"
        assert packed["test"]["epoch"] == solo["test"]["epoch"]
        assert packed["test"]["acc"] == pytest.approx(solo["test"]["acc"], rel=REL)
    mixed = [*cfgs, compose_config(["model=tudui", *micro])]
    dirs = [str(tmp_path / f"mixed{i}") for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="optimlab.run.packed"):
        values = run_packed(mixed, dirs, [[], [], []], [[], [], []])
    assert "cannot train as one pack" in caplog.text
    assert values[:2] == pytest.approx(alone, rel=REL)
    for d in dirs:
        assert json.loads((Path(d) / "summary.json").read_text())["status"] == "completed"
    # too little free memory for two at once: one line says so, and they train one at a time
    dirs = [str(tmp_path / f"small{i}") for i in range(2)]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="optimlab.run.packed"):
        values = run_packed(cfgs, dirs, [[], []], [[], []], free=1)
    assert "hydra.sweeper.pack: 2 trials do not fit at once on cpu" in caplog.text
    assert "they train in packs of at most 1" in caplog.text and "as one pack" not in caplog.text
    assert values == pytest.approx(alone, rel=REL)


def test_bad_pack_value_is_one_line_before_anything_is_written(tmp_path):
    proc = train_cli("-m", "hydra/sweeper=optimlab", "hydra.sweep.dir=multirun/bad", *TINY, "lr=0.01,0.1",
                     "hydra.sweeper.pack=0", cwd=tmp_path, timeout=120)  # fmt: skip
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["Error: hydra.sweeper.pack=0: must be an integer >= 1 (trials trained at once) or auto"], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("value", [0, -2, 1.5, "four", True, None])
def test_check_pack_refuses(value):
    with pytest.raises(SweepConfigError, match=r"^hydra\.sweeper\.pack=.*: must be an integer >= 1"):
        check_pack(value)


@pytest.mark.parametrize("value", [1, 4, 64, "auto"])
def test_check_pack_accepts(value):
    check_pack(value)


def test_grouping_keeps_shape_changing_keys_apart():
    trials = [
        ["lr=0.1", "batch_size=16"], ["lr=0.2", "batch_size=32"], ["lr=0.3", "batch_size=16"],
        ["lr=0.4", "batch_size=16", "momentum=0.5"], ["lr=0.5", "batch_size=32", "seed=3"],
        ["lr=0.6", "batch_size=16", "model=fastnet"], ["lr=0.7", "batch_size=16", "optimizer.betas=[0.9,0.99]"],
    ]  # fmt: skip
    assert groups(trials, 4) == [[0, 2, 3, 6], [1, 4], [5]]
    assert groups(trials, 2) == [[0, 2], [1, 4], [3, 6], [5]]
    assert groups(trials, 1) == [[i] for i in range(len(trials))]
    # hydra's own keys never split a pack
    assert shape_key(["lr=0.1", "hydra.sweep.subdir=trial_0001"]) == shape_key(["lr=0.2", "hydra.sweep.subdir=x"])
    for key in ("lr", "momentum", "weight_decay", "seed", "optimizer.betas", "scheduler.gamma", "+scheduler.factor"):
        assert is_packable(key), key
    for key in ("model", "batch_size", "epochs", "data", "data.image_size", "precision", "optimizer", "scheduler",
                "model.width", "channels_last", "resume"):
        assert not is_packable(key), key


def test_pack_size_per_device():
    assert pack_size("auto", "cpu") == 1
    assert pack_size("auto", "mps") == 1
    assert pack_size("auto", "cuda") == 1  # off until a GPU measurement shows the win
    assert pack_size(8, "cpu") == 8
    assert pack_size(1, "cuda") == 1

    def foreign_task(cfg):  # another app's task: its trials are not optimlab runs
        return 0.0

    assert pack_size(8, "cuda", foreign_task) == 1


@pytest.mark.slow
def test_sigterm_stops_a_pack_resumably_and_the_rerun_continues_its_trials(tmp_path):
    """Every trial of the pack keeps its last finished epoch (status preempted), the worker
    exits 143, and the same command again continues each trial from that epoch."""
    import os
    import signal
    import time

    from conftest import ROOT, TRAIN_PY

    tiny = [o for o in TINY if not o.startswith("epochs=")]
    args = ["-m", "hydra/sweeper=optimlab", "hydra.sweep.dir=multirun/t", *tiny, "epochs=3", "batch_size=16",
            "lr=interval(0.01,0.1)", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.plots=false", "hydra.sweeper.pack=2"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "tests" / "faults"), "OPTIMLAB_HANG_AT": "2"}
    with open(tmp_path / "t.log", "w") as out:
        proc = subprocess.Popen([sys.executable, str(TRAIN_PY), *args], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
        root = tmp_path / "multirun" / "t"
        deadline = time.time() + 240
        while sum((d / "metrics.csv").exists() for d in root.glob("trial_*")) < 2:
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "t.log").read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    log = (tmp_path / "t.log").read_text()
    assert proc.returncode == 143, log[-3000:]
    assert "Traceback" not in log
    assert "training 2 runs as one pack" in log
    for folder in sorted(root.glob("trial_*")):
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"] == "preempted" and summary["epochs_completed"] == 1, folder

    ok(train_cli(*args, cwd=tmp_path, timeout=300))
    study = optuna.load_study(study_name="optimlab", storage=f"sqlite:///{root / 'optuna.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    resumed = {t.user_attrs["resume_of"]: t for t in study.trials if "resume_of" in t.user_attrs}
    assert sorted(resumed) == [0, 1]
    for number, t in resumed.items():
        assert t.params == study.trials[number].params
        summary = json.loads((root / f"trial_{t.number:04d}" / "summary.json").read_text())
        assert summary["resumed_from"]["epoch"] == 1 and summary["epochs_completed"] == 3
