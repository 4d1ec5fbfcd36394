"""The preset's levers for a small continuous space: the effective step lr / (1 - momentum)
sampled in place of lr (``hydra.sweeper.effective_step``), Optuna's GPSampler
(``hydra/sweeper/sampler=gp``), and ``n_workers=auto``, on real sweeps."""

from __future__ import annotations

import csv
import json
import math
import re

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from test_sweep import load, ok, sweep

from optimlab.sweeping import workers

SPACE = ["optimizer=momentum", "epochs=1", "lr=tag(log,interval(1e-3,0.3))", "momentum=interval(0.0,0.9)",
         "hydra.sweeper.plots=false"]  # fmt: skip
STEP = "lr/(1-momentum)"


def test_the_effective_step_is_sampled_and_lr_and_momentum_are_what_the_user_sees(tmp_path):
    ok(sweep(tmp_path, *SPACE, "hydra.sweeper.effective_step=[lr,momentum]", "hydra.sweeper.n_trials=3"))
    study = load(tmp_path)
    # the study samples the step (log, from the smallest to the largest lr / (1 - momentum)) and momentum
    dist = study.trials[0].distributions[STEP]
    assert dist.log and math.isclose(dist.low, 1e-3) and math.isclose(dist.high, 0.3 / (1 - 0.9))
    assert set(study.trials[0].params) == {STEP, "momentum"}
    rows = {int(r["number"]): r for r in csv.DictReader((tmp_path / "multirun/s/trials.csv").open())}
    assert STEP not in next(iter(rows.values()))
    for t in study.trials:
        m, s = t.params["momentum"], t.params[STEP]
        lr = min(max(s * (1 - m), 1e-3), 0.3)  # kept inside lr's own range
        row = rows[t.number]
        assert math.isclose(float(row["lr"]), lr) and math.isclose(float(row["momentum"]), m)
        # the run trained with that lr: its own config says so
        run = yaml.safe_load((tmp_path / "multirun/s" / f"trial_{t.number:04d}/.hydra/config.yaml").read_text())
        assert math.isclose(run["lr"], lr) and math.isclose(run["momentum"], m)
    results = yaml.safe_load((tmp_path / "multirun/s/optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"lr", "momentum"}
    best = rows[results["best_trial"]]
    assert f"lr={best['lr']}" in results["best_command"] and STEP not in results["best_command"]


def test_turning_the_effective_step_on_for_an_existing_study_is_a_changed_definition(tmp_path):
    ok(sweep(tmp_path, *SPACE, "hydra.sweeper.n_trials=1"))
    proc = sweep(tmp_path, *SPACE, "hydra.sweeper.effective_step=[lr,momentum]", "hydra.sweeper.n_trials=2")
    assert proc.returncode == 2 and "effective_step" in proc.stderr and "Traceback" not in proc.stderr
    assert len(load(tmp_path).trials) == 1


@pytest.mark.parametrize("value, said", [
    ("[lr]", "must name two searched keys"),
    ("[lr,weight_decay]", "weight_decay is not searched"),
    ("[momentum,lr]", "momentum must be searched on a log scale"),
])  # fmt: skip
def test_a_bad_effective_step_is_one_line_before_any_trial(tmp_path, value, said):
    proc = sweep(tmp_path, *SPACE, f"hydra.sweeper.effective_step={value}", "hydra.sweeper.n_trials=2")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "hydra.sweeper.effective_step=" in lines[0] and said in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.glob("multirun/s/trial_*"))


@pytest.mark.slow
def test_the_gp_sampler_is_a_sampler_choice_and_is_seeded(tmp_path):
    args = [*SPACE, "hydra/sweeper/sampler=gp", "hydra.sweeper.sampler.seed=3", "hydra.sweeper.sampler.n_startup_trials=2",
            "hydra.sweeper.n_trials=3"]  # fmt: skip
    proc = sweep(tmp_path, *args, name="a")
    ok(proc)
    assert "sampler GPSampler" in proc.stdout + proc.stderr
    ok(sweep(tmp_path, *args, name="b"))
    first, second = load(tmp_path, "a"), load(tmp_path, "b")
    # trial 2 is the GP's own pick (after 2 start-up trials); a seeded GP picks the same point twice
    assert len(first.trials) == 3 and [t.params for t in first.trials] == [t.params for t in second.trials]


@pytest.mark.slow
def test_n_workers_auto_starts_one_worker_per_core_each_with_its_share_of_threads(tmp_path):
    n = min(workers.cores(), 3)
    proc = sweep(tmp_path, *SPACE, "hydra.sweeper.n_workers=auto", "hydra.sweeper.n_trials=3", name="w")
    ok(proc)
    said = re.search(r"n_workers=auto: (\d+) worker\(s\) \((.*?)\), (\d+) CPU thread", proc.stdout + proc.stderr)
    assert said, proc.stderr[-2000:]
    assert int(said.group(1)) == n and int(said.group(3)) == max(1, workers.cores() // n)
    path = tmp_path / "multirun/w/optuna.journal"  # several workers: the journal file
    if n > 1:
        study = optuna.load_study(study_name="optimlab", storage=JournalStorage(JournalFileBackend(str(path))))
        assert {t.user_attrs["worker"] for t in study.trials} == set(range(n))
        threads = {json.loads((tmp_path / "multirun/w" / f"trial_{t.number:04d}/summary.json").read_text())
                   ["device"]["threads"] for t in study.trials}  # fmt: skip
        assert threads == {max(1, workers.cores() // n)}


def test_auto_count_follows_the_device():
    assert workers.auto_count("cuda", 20, ["0", "1", "2"])[0] == 3
    assert workers.auto_count("cuda", 20, [])[0] == 1
    assert workers.auto_count("cpu", 20, [])[0] == workers.cores()
    assert workers.auto_count("cpu", 1, [])[0] == 1  # never more workers than trials
    assert workers.auto_count("mps", 20, [])[0] == 1
