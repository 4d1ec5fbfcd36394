"""The README's newcomer path on digits, each step checked against the others:
sweep → optimlab-report → rerun of the best trial → optimlab-eval → optimlab-predict on
PNG files → optimlab.load. Every step runs in this process (no process boundary is under test)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import compose_config, run_in_process, train_cli
from test_use import write_pngs

import optimlab
from optimlab.engine.training import TIMING_COLUMNS
from optimlab.run.runner import load_data
from optimlab.sweeping import workers
from optimlab.use import eval_main, predict_main

pytestmark = pytest.mark.slow

DATA = ["data=digits", "data.image_size=16", "+data.limit=384"]
SMALL = [*DATA, "model=lenet", "batch_size=16", "epochs=2", "quiet=true", "logger=none"]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(f)]


def console(main, argv, capsys) -> str:
    """An optimlab-eval / optimlab-predict console script called here: its stdout; exit 0."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    out = capsys.readouterr()
    assert done.value.code == 0, out.err[-3000:]
    return out.out


def test_sweep_report_rerun_eval_predict_load_agree(tmp_path, capsys, monkeypatch):
    # 2. sweep (the preset to start with; 4 seeded trials of 2 epochs)
    proc = train_cli("-m", "sweep=lr_momentum_fast", "hydra.sweeper.n_trials=4", *SMALL, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "multirun" / "lr_momentum_fast"
    # the preset's sampler and worker layout: multivariate TPE, one single-thread worker per core
    out = proc.stdout + proc.stderr
    n = min(workers.cores(), 4)
    assert "sampler TPESampler" in out and f"n_workers=auto: {n} worker(s) ({workers.cores()} CPU cores)" in out, out[-3000:]
    ran = {summary(d)["device"]["threads"] for d in sweep.glob("trial_*")}
    assert ran == {max(1, workers.cores() // n)}
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = Path(results["best_run_dir"])
    assert re.search(rf"Best value \S+ \(trial {results['best_trial']}\)", proc.stdout + proc.stderr)
    with open(sweep / "trials.csv", newline="") as f:
        assert [int(r["number"]) for r in csv.DictReader(f) if r["best"] == "True"] == [results["best_trial"]]

    # 3. see the best: optimlab-report with no folder takes the newest sweep folder
    proc = run_in_process([], cwd=tmp_path, module="optimlab.report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"best: {best.name} " in proc.stdout, proc.stdout

    # 4. re-train the best trial: the same numbers, from the best epoch's weights
    proc = run_in_process([str(sweep)], cwd=tmp_path, module="optimlab.rerun")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rerun,) = [p for p in (tmp_path / "outputs").glob("*/*") if summary(p).get("rerun_of") == str(best)]
    trial, again = summary(best), summary(rerun)
    assert metrics(rerun) == metrics(best)
    assert again["test"] == trial["test"] and again["test"]["weights"] == "best"
    assert (rerun / "curves.png").is_file()  # plots back on
    assert proc.stdout.strip().splitlines()[-1].endswith(f"run folder: {rerun}")

    # 5. evaluate: the summary's test figures again
    test = again["test"]
    out = console(eval_main, [str(rerun)], capsys)
    assert f"test_acc {test['acc']:.4f}" in out and f"(best epoch {test['epoch']} weights" in out, out
    (entry,) = json.loads((rerun / "eval.json").read_text())["evaluations"]
    assert (entry["loss"], entry["acc"], entry["epoch"]) == (test["loss"], test["acc"], test["epoch"])

    # 6. predict a folder of PNGs; optimlab.load's model gives the same classes
    x = load_data(compose_config(DATA), torch.device("cpu")).test.x[:24]
    paths = write_pngs(tmp_path / "my_digits", x)
    monkeypatch.chdir(tmp_path)
    console(predict_main, [str(rerun), "my_digits"], capsys)  # its one line is the log's (stderr)
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    loaded = optimlab.load(rerun)
    assert (loaded.weights, loaded.epoch) == ("best", test["epoch"])
    with torch.inference_mode():
        argmax = loaded.model(loaded.transform.batch(paths)).argmax(1).tolist()
    assert [r["file"] for r in rows] == [p.name for p in paths]
    assert [r["class"] for r in rows] == [loaded.classes[i] for i in argmax]
