"""Run folders: `python train.py` writes a self-describing folder; runs never share one (two
real processes started in the same second)."""

from __future__ import annotations

import csv
import json

import torch

from conftest import ROOT, TINY, finish, run_dirs, start_python, train_cli
from optimlab.engine.training import METRIC_COLUMNS as METRICS_COLUMNS


def test_train_py_writes_a_complete_run_folder(tmp_path):
    proc = train_cli(*TINY, "epochs=2", "optimizer=momentum", "scheduler=step", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = run_dirs(tmp_path)
    for name in [".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "train.log",
                 "metrics.csv", "summary.json", "checkpoint.pt"]:  # fmt: skip
        assert (folder / name).is_file(), name

    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    assert tuple(rows[0].keys()) == METRICS_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["images_per_s"]) > 0 for r in rows)

    s = json.loads((folder / "summary.json").read_text())
    assert s["status"] == "completed"
    assert s["epochs_completed"] == 2
    assert s["objective"]["metric"] == "val_acc" and s["objective"]["direction"] == "maximize"
    assert s["objective"]["value"] == max(float(r["val_acc"]) for r in rows)
    assert s["best"]["epoch"] == s["objective"]["best_epoch"]
    assert s["final"]["epoch"] == 2
    assert 0 <= s["test"]["acc"] <= 1
    assert s["durations"]["total_s"] >= s["durations"]["train_s"] > 0
    assert s["device"]["type"] == "cpu" and s["device"]["name"]
    assert s["versions"]["torch"] == torch.__version__ and s["versions"]["python"]
    assert len(s["git"]["commit"]) == 40 and isinstance(s["git"]["dirty"], bool)
    assert s["seed"] == 0
    assert s["command"].startswith("python ") and "optimizer=momentum" in s["command"]
    assert "scheduler=step" in s["overrides"]

    ckpt = torch.load(folder / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and {"model", "optimizer", "scheduler", "rng"} <= ckpt.keys()
    log = (folder / "train.log").read_text()
    assert "epoch 2/2" in log and "test_acc" in log
    # the folder is named once at the start and once at the very end
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    named = [i for i, line in enumerate(lines) if "run folder: " in line]
    assert len(named) == 2 and named[-1] == len(lines) - 1, proc.stdout
    assert all(lines[i].endswith(f"run folder: {folder}") for i in named)


def test_two_runs_started_in_the_same_second_get_distinct_folders(tmp_path):
    # Pin the time part of the folder name so only optimlab's unique id can keep them apart.
    args = [*TINY, "hydra.run.dir=outputs/same/${now:%Y-%m-%d}_${optimlab.uid:}"]
    procs = [
        start_python(*args, cwd=tmp_path) for _ in range(2)  # two real processes at once
    ]
    for p in procs:
        code, out = finish(p)
        assert code == 0, out[-3000:]
    folders = run_dirs(tmp_path, "outputs/same/*")
    assert len(folders) == 2
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["run_dir"] == str(folder.resolve())


def test_multirun_writes_one_folder_per_job(tmp_path):
    proc = train_cli("-m", *TINY, "optimizer=sgd,adam", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = [p for p in run_dirs(tmp_path, "multirun/*/*/*") if (p / "summary.json").exists()]
    assert len(folders) == 2
    optimizers = {json.loads((f / "summary.json").read_text())["overrides"][-1] for f in folders}
    assert optimizers == {"optimizer=sgd", "optimizer=adam"}
    assert "run folder: " not in proc.stdout + proc.stderr  # no per-job lines in a multirun


def test_readme_shows_the_run_and_test_commands_first():
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert lines[0].startswith("uv run python train.py")
    assert lines[1] == 'uv run pytest -n 2 -m "not slow"'  # the fast tier
    assert lines[2] == "uv run pytest -n 2"  # the full suite ...
    ci = [line.split("#")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci[-1] == lines[2]  # ... is what CI runs


def test_a_grid_multirun_job_that_diverges_is_one_line_and_the_others_run(tmp_path):
    proc = train_cli("-m", *TINY, "data.image_size=8", "data.channels=1", "lr=1e9,0.1", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out[-3000:]
    diverged, completed = sorted(run_dirs(tmp_path, "multirun/*/*/*"))
    statuses = [json.loads((f / "summary.json").read_text())["status"] for f in (diverged, completed)]
    assert statuses == ["diverged", "completed"]  # the job after the diverged one still ran
    assert proc.stderr.strip().splitlines()[-1] == f"error: 1 job of the multirun failed: {diverged} (diverged)"
    assert sum("training diverged" in line for line in out.splitlines()) == 1


def test_help_lists_the_groups_and_the_knobs_with_their_defaults(tmp_path):
    from conftest import compose_config

    proc = train_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert text.startswith("optimlab: ") and "== Config groups (group=option) ==" in text
    for group in ("model", "optimizer", "scheduler", "device", "data", "logger", "sweep", "debug", "experiment"):
        assert f"\n{group}: " in text, group  # Hydra's list of the options
    cfg = compose_config()
    for knob in ("lr", "momentum", "weight_decay", "epochs", "batch_size", "seed", "deterministic", "precision",
                 "compile", "test_on", "resume"):  # fmt: skip
        shown = str(cfg[knob]).lower() if isinstance(cfg[knob], bool) else str(cfg[knob])
        assert f"  {knob}={shown} " in text, knob  # the default as conf/config.yaml has it
    assert "data.root=$HOME/pets" in text and not list(tmp_path.iterdir())  # nothing written
