"""optimlab.report on real multiruns: a grid (job folders 0..3) and an Optuna sweep."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from optimlab import report
from conftest import TINY, run_in_process, train_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# TINY without its epochs=1, on a small LeNet input so each job takes a second or two
BASE = [o for o in TINY if not o.startswith("epochs=")] + ["model=lenet", "data.image_size=16", "data.channels=1"]


def assert_png(path: Path) -> None:
    from matplotlib.image import imread
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.verify()
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0.01  # something was drawn


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summaries(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}


def only_sweep(base: Path) -> Path:
    sweeps = [p for p in base.glob("multirun/*/*") if p.is_dir()]
    assert len(sweeps) == 1, sweeps
    return sweeps[0]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """`train.py -m optimizer=sgd,adam lr=0.05,0.01 epochs=2`: four job folders 0..3, with curves.png."""
    cwd = tmp_path_factory.mktemp("grid")
    proc = train_cli("-m", *BASE, "epochs=2", "plots=true", "optimizer=sgd,adam", "lr=0.05,0.01", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return only_sweep(cwd)


@pytest.mark.slow
def test_grid_report_table_csv_and_png(grid):
    proc = run_in_process([str(grid)], cwd=grid, module="optimlab.report")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # every job also got its own curves.png
    for job in ("0", "1", "2", "3"):
        assert_png(grid / job / "curves.png")

    truth = summaries(grid)
    assert sorted(truth) == ["0", "1", "2", "3"]
    assert all(s["status"] == "completed" for s in truth.values())
    values = {name: s["objective"]["value"] for name, s in truth.items()}

    # the table: header, rule, one line per run, best first; the swept keys are columns
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("#"))
    assert "optimizer" in lines[header] and "lr" in lines[header] and "best val_acc" in lines[header]
    rows = lines[header + 2 : header + 6]
    assert [r.split()[0] for r in rows] == ["1", "2", "3", "4"]
    shown = [float(r.split()[5]) for r in rows]  # #, run, optimizer, lr, status, best val_acc
    assert shown == sorted(shown, reverse=True)
    assert sorted(shown) == sorted(round(v, 4) for v in values.values())
    assert "common overrides:" in out and "data=synthetic" in out
    assert "best:" in out and "python train.py" in out

    # report.csv: one row per run, ranked, with params and metrics from the run folders
    table = read_csv(grid / "report.csv")
    assert [r["rank"] for r in table] == ["1", "2", "3", "4"]
    assert sorted(r["run"] for r in table) == ["0", "1", "2", "3"]
    csv_values = [float(r["objective_value"]) for r in table]
    assert csv_values == sorted(csv_values, reverse=True)
    for r in table:
        s = truth[r["run"]]
        assert float(r["objective_value"]) == pytest.approx(s["objective"]["value"])
        assert float(r["test_acc"]) == pytest.approx(s["test"]["acc"])
        assert int(r["best_epoch"]) == s["objective"]["best_epoch"]
        assert r["status"] == "completed" and r["epochs_completed"] == "2" and r["epochs"] == "2"
        assert f"optimizer={r['param.optimizer']}" in s["overrides"]
        assert f"lr={r['param.lr']}" in s["overrides"]
        assert float(r["duration_s"]) > 0
    assert {(r["param.optimizer"], r["param.lr"]) for r in table} == {
        ("sgd", "0.05"), ("sgd", "0.01"), ("adam", "0.05"), ("adam", "0.01")
    }
    assert_png(grid / "report.png")


@pytest.mark.slow
def test_console_script_writes_elsewhere_without_plot(grid, tmp_path):
    script = Path(sys.executable).parent / "optimlab-report"
    assert script.exists(), "the optimlab-report console script is not installed"
    proc = subprocess.run(
        [str(script), str(grid), "--out", str(tmp_path), "--no-plot"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert len(read_csv(tmp_path / "report.csv")) == 4
    assert not (tmp_path / "report.png").exists()
    assert "4 runs (4 completed)" in proc.stdout


@pytest.mark.slow
@pytest.mark.filterwarnings("error::UserWarning")  # e.g. a legend squeezing the axes away
def test_partial_folder_does_not_crash(grid, tmp_path):
    """A sweep caught mid-write: missing, running, torn and empty run folders."""
    sweep = tmp_path / "sweep"
    shutil.copytree(grid, sweep)
    for name in ("report.csv", "report.png"):
        (sweep / name).unlink(missing_ok=True)
    # job 0: still running, one epoch so far
    s0 = json.loads((sweep / "0" / "summary.json").read_text())
    for key in ("objective", "best", "final", "test", "durations", "finished_at"):
        s0.pop(key, None)
    s0["status"] = "running"
    (sweep / "0" / "summary.json").write_text(json.dumps(s0))
    metrics = (sweep / "0" / "metrics.csv").read_text().splitlines()
    (sweep / "0" / "metrics.csv").write_text("\n".join(metrics[:2]) + "\n")
    # job 1: started, nothing but Hydra's files yet
    (sweep / "1" / "summary.json").unlink()
    (sweep / "1" / "metrics.csv").unlink()
    # job 2: summary.json torn, metrics.csv cut mid-line
    (sweep / "2" / "summary.json").write_text('{"status": "compl')
    text = (sweep / "2" / "metrics.csv").read_text()
    (sweep / "2" / "metrics.csv").write_text(text[: len(text) - 9])
    # job 4: a folder Hydra just made
    (sweep / "4" / ".hydra").mkdir(parents=True)
    job3 = (sweep / "3" / ".hydra" / "overrides.yaml").read_text()
    (sweep / "4" / ".hydra" / "overrides.yaml").write_text(job3.replace("lr=0.01", "lr=0.1"))

    text = report.report(sweep)
    table = {r["run"]: r for r in read_csv(sweep / "report.csv")}
    assert sorted(table) == ["0", "1", "2", "3", "4"]
    assert table["0"]["status"] == "running" and table["0"]["epochs_completed"] == "1"
    assert math.isfinite(float(table["0"]["objective_value"]))  # best epoch so far
    assert table["1"]["status"] == "incomplete" and table["1"]["objective_value"] == ""
    assert table["2"]["status"] == "incomplete" and table["2"]["epochs_completed"] in ("1", "2")
    assert table["3"]["status"] == "completed"
    assert table["4"]["status"] == "incomplete" and table["4"]["param.lr"] == "0.1"
    # runs without a value come last
    ranks = {r["run"]: int(r["rank"]) for r in table.values()}
    assert ranks["1"] > ranks["3"] and ranks["4"] > ranks["3"]
    assert "running" in text and "incomplete" in text
    assert_png(sweep / "report.png")


def _fake_run(folder: Path, overrides: list[str], val_loss: list[float], status: str = "completed") -> None:
    from optimlab.engine.training import EpochResult
    from optimlab.run.folder import RunFolder

    run = RunFolder(folder)
    rows = [
        {"epoch": e, "lr": 0.1, "train_loss": v, "val_loss": v, "val_acc": 1 - v / 3, "seconds": 1.0,
         "images_per_s": 100.0}
        for e, v in enumerate(val_loss, 1)
    ]  # fmt: skip
    run.write_metrics([EpochResult(**r) for r in rows])
    best = min(rows, key=lambda r: r["val_loss"])
    run.write_summary({
        "status": status, "overrides": overrides,
        "objective": {"metric": "val_loss", "direction": "minimize", "value": best["val_loss"],
                      "best_epoch": best["epoch"]},
        "best": best, "final": rows[-1], "durations": {"total_s": 2.0},
    })  # fmt: skip


def test_minimize_objective_sorts_ascending(tmp_path):
    _fake_run(tmp_path / "trial_0010", ["lr=0.3"], [2.0, 1.5])
    _fake_run(tmp_path / "trial_0002", ["lr=0.1"], [2.0, 0.5, 0.7])
    _fake_run(tmp_path / "trial_0001", ["lr=0.2"], [2.0, 1.0])
    _fake_run(tmp_path / "trial_0003", ["lr=9"], [float("nan")], status="diverged")
    runs, metric, direction = report.collect(tmp_path)
    assert (metric, direction) == ("val_loss", "minimize")
    assert [r.name for r in runs] == ["trial_0002", "trial_0001", "trial_0010", "trial_0003"]
    assert [r.value for r in runs[:3]] == [0.5, 1.0, 1.5] and runs[3].value is None


@pytest.mark.slow
def test_optuna_sweep_report(tmp_path):
    """Upstream `hydra/sweeper=optuna`: its job folders are reported like any other."""
    proc = train_cli(
        "-m", *BASE, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.direction=maximize",
        "hydra.sweeper.sampler.seed=0", "lr=interval(0.001,0.05)", "epochs=1", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = only_sweep(tmp_path)
    assert report.main([str(sweep)]) == 0
    table = read_csv(sweep / "report.csv")
    truth = summaries(sweep)
    assert len(table) == len(truth) == 3
    values = [float(r["objective_value"]) for r in table]
    assert values == sorted(values, reverse=True)
    for r in table:
        assert float(r["objective_value"]) == pytest.approx(truth[r["run"]]["objective"]["value"])
        assert 0.001 <= float(r["param.lr"]) <= 0.05  # the sampled parameter is a column
    assert_png(sweep / "report.png")


@pytest.mark.slow
def test_optimlab_sweep_report_agrees_with_the_study(tmp_path):
    """optimlab's sweeper (trial_NNNN folders): the report from run folders alone matches the study."""
    proc = train_cli(
        "-m", "hydra/sweeper=optimlab", "hydra.sweep.dir=multirun/s", "hydra.sweeper.n_trials=3",
        "hydra.sweeper.plots=false", *BASE, "epochs=1", "lr=tag(log,interval(1e-3,0.05))", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "multirun" / "s"
    text = report.report(sweep)
    table = read_csv(sweep / "report.csv")
    assert sorted(r["run"] for r in table) == ["trial_0000", "trial_0001", "trial_0002"]
    with open(sweep / "trials.csv", newline="") as f:
        study = {f"trial_{int(t['number']):04d}": t for t in csv.DictReader(f)}
    for r in table:
        t = study[r["run"]]
        assert r["status"] == t["status"]
        assert float(r["objective_value"]) == pytest.approx(float(t["value"]))
        assert float(r["param.lr"]) == pytest.approx(float(t["lr"]))
    values = [float(r["objective_value"]) for r in table]
    assert values == sorted(values, reverse=True)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("#"))
    assert lines[header + 2].split()[1] == table[0]["run"]  # the table's first row is the best trial
    assert_png(sweep / "report.png")


def test_tied_best_values_name_the_same_trial_in_the_summary_trials_csv_and_the_report(tmp_path):
    """One rule for "the best trial" (optimlab.objective.best_trial): best value, ties to the
    earliest trial (Optuna's generic BaseStorage rule); the sweeper's summary, trials.csv and
    optimlab-report all name it, whatever order the tied trials finished in (Optuna's
    in-memory study.best_trial would name trial 4 here, the first of equals to finish)."""
    import optuna
    from optuna.trial import TrialState

    from optimlab.sweeping import summary

    losses = {0: [1.0], 1: [0.5], 2: [2.0], 3: [0.9, 0.5], 4: [0.5]}  # trials 1, 3 and 4 tie at 0.5
    study = optuna.create_study(direction="minimize", storage=optuna.storages.InMemoryStorage())
    trials = [study.ask() for _ in losses]  # asked in number order, finished in reverse: 4 first
    for t in reversed(trials):
        folder = tmp_path / f"trial_{t.number:04d}"
        _fake_run(folder, [f"lr={t.number}"], losses[t.number])
        t.set_user_attr("run_dir", str(folder))
        study.tell(t, min(losses[t.number]), state=TrialState.COMPLETE)
    results = summary.write_tables(study, tmp_path, ["lr=1"], "sqlite:///x.db")
    assert results["best_trial"] == 1 and results["best_value"] == 0.5
    assert summary.top_table(study, 3).splitlines()[2].split()[0] == "1"
    with open(tmp_path / summary.TRIALS_FILE, newline="") as f:
        assert [int(r["number"]) for r in csv.DictReader(f) if r["best"] == "True"] == [1]
    text = report.report(tmp_path, plot=False)
    assert "best: trial_0001 (val_loss 0.5000)" in text, text
    runs, _, direction = report.collect(tmp_path)
    assert [r.name for r in runs[:3]] == ["trial_0001", "trial_0003", "trial_0004"]


def test_no_argument_reports_the_newest_sweep_folder_not_a_job_folder(tmp_path, monkeypatch, capsys):
    import os

    old = tmp_path / "multirun" / "2026-01-01" / "10-00-00"
    _fake_run(old / "0", ["lr=0.1"], [1.0])
    study = tmp_path / "multirun" / "lr_momentum_fast"  # a preset's sweep.dir: trials right under multirun/<study>
    for n in range(3):
        _fake_run(study / f"trial_{n:04d}", [f"lr={n}"], [1.0 + n])
    for path in [old, old / "0", *(p for p in old.rglob("*"))]:
        os.utime(path, (1, 1))  # the grid multirun is older
    monkeypatch.chdir(tmp_path)
    assert report.latest_multirun() == Path("multirun/lr_momentum_fast")
    assert report.main(["--no-plot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("multirun/lr_momentum_fast: 3 runs") and "best: trial_0000" in out, out
    _fake_run(tmp_path / "multirun" / "2026-01-02" / "09-00-00" / "0", ["lr=0.2"], [0.5])  # a newer sweep
    assert report.latest_multirun() == Path("multirun/2026-01-02/09-00-00")
