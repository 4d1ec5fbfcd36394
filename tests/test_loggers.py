"""The `logger` group: several trackers at once, each with the same scalars, hyperparameters,
final status and test metrics; MLflow read back from real SQLite and file stores through its
client; W&B read back from the offline run file it writes; a sweep grouped in both; a tracker
that fails (server unreachable, package missing) is one warning line and the run goes on."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import pytest

from conftest import TINY, compose_config, train_cli
from optimlab.engine.training import LOGGER_TAGS
from optimlab.run.runner import run

RUN = [*TINY, "epochs=2", "tensorboard=true"]
FAULTS = str(Path(__file__).resolve().parent / "faults")
SMALL = [*RUN, "model=lenet", "data.image_size=16", "data.channels=1"]  # a smaller net: the trackers are under test


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_rows_per_epoch_then_the_end(tmp_path):
    cfg = compose_config([*RUN, "logger=csv", "lr=0.05"])
    run(cfg, str(tmp_path), overrides=["lr=0.05"])
    rows = read_csv(tmp_path / "log.csv")
    metrics = read_csv(tmp_path / "metrics.csv")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["epoch"] for r in rows] == ["1", "2", "end"]
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    assert len(header) == len(set(header)), header  # no column twice (the epoch's lr, the lr hyperparameter)
    for row, m in zip(rows, metrics):
        assert float(row["train/loss"]) == pytest.approx(float(m["train_loss"]), rel=1e-5)
        assert float(row["val/acc"]) == pytest.approx(float(m["val_acc"]), rel=1e-5)
        assert float(row["lr"]) == pytest.approx(float(m["lr"]))  # the epoch's lr, as metrics.csv
        assert row["hparam.lr"] == "0.05" and row["data"] == "synthetic"
    end = rows[-1]
    assert end["status"] == "completed"
    assert float(end["test/acc"]) == pytest.approx(summary["test"]["acc"])
    # which weights the test figures come from
    assert end["test_weights"] == f"best epoch {summary['test']['epoch']}"
    assert float(end["test/weights_epoch"]) == summary["test"]["epoch"]
    assert float(end["objective"]) == pytest.approx(summary["objective"]["value"])
    assert not list(tmp_path.glob("events.out.tfevents.*"))  # only the loggers asked for


def test_several_loggers_and_none(tmp_path):
    run(compose_config([*RUN, "logger=[tensorboard,csv]"]), str(tmp_path / "both"))
    assert (tmp_path / "both" / "log.csv").exists() and list((tmp_path / "both").glob("events.out.tfevents.*"))
    run(compose_config([*RUN, "logger=none"]), str(tmp_path / "none"))
    names = {p.name for p in (tmp_path / "none").iterdir()}
    assert "log.csv" not in names and not any(n.startswith("events.out") for n in names)
    assert json.loads((tmp_path / "none" / "summary.json").read_text())["status"] == "completed"


def test_a_failing_logger_is_one_warning_and_the_run_goes_on(tmp_path, caplog):
    bad = tmp_path / "not_a_folder"
    bad.write_text("a file where the database's folder should be")
    cfg = compose_config([*RUN, "logger=[mlflow,csv]", f"logger.mlflow.tracking_uri=sqlite:///{bad}/mlflow.db"])
    with caplog.at_level(logging.WARNING):
        run(cfg, str(tmp_path / "run"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "logger mlflow" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "could not start" in warnings[0], warnings
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    assert [r["epoch"] for r in read_csv(tmp_path / "run" / "log.csv")] == ["1", "2", "end"]  # the others go on


@pytest.mark.slow
def test_mlflow_sqlite_store_read_back_through_the_client(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = ["logger=mlflow", f"logger.mlflow.tracking_uri={uri}", "logger.mlflow.experiment=study1",
                 "lr=0.001", "optimizer=adam"]  # fmt: skip
    cfg = compose_config([*RUN, *overrides])
    run(cfg, str(tmp_path / "run"), overrides=overrides)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    metrics = read_csv(tmp_path / "run" / "metrics.csv")

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("study1")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    params = found.data.params
    assert params["lr"] == "0.001" and params["optimizer"] == "adam" and params["epochs"] == "2"
    assert found.data.tags["optimlab.status"] == "completed"
    assert found.data.tags["optimlab.run_dir"] == str(tmp_path / "run")
    for field, tag in LOGGER_TAGS.items():
        history = client.get_metric_history(found.info.run_id, tag)
        assert [m.step for m in history] == [1, 2], tag
        assert [m.value for m in history] == pytest.approx([float(r[field]) for r in metrics], rel=1e-5), tag
    assert found.data.metrics["test/acc"] == pytest.approx(summary["test"]["acc"])
    assert found.data.tags["optimlab.test_weights"] == f"best epoch {summary['test']['epoch']}"
    assert found.data.metrics["test/weights_epoch"] == summary["test"]["epoch"]
    assert found.data.metrics["objective"] == pytest.approx(summary["objective"]["value"])


# --------------------------------------------------------------------------- MLflow file store, sweeps


def mlflow_runs(uri, experiment="optimlab"):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id]) if found else []


@pytest.mark.slow
def test_mlflow_file_store_read_back_through_the_client(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the logger opts in for a file: URI itself
    uri = (tmp_path / "mlruns").as_uri()  # file:///.../mlruns
    overrides = ["logger=mlflow", f"logger.mlflow.tracking_uri={uri}", "logger.mlflow.tags={team: vision}", "lr=0.02"]
    run(compose_config([*SMALL, *overrides]), str(tmp_path / "run"), overrides=overrides)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    metrics = read_csv(tmp_path / "run" / "metrics.csv")

    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"  # what `mlflow ui` on a file store needs too
    client, (found,) = mlflow_runs(uri)
    assert (tmp_path / "mlruns").is_dir()
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    assert found.data.params["lr"] == "0.02" and found.data.params["data"] == "synthetic"
    assert found.data.tags["team"] == "vision" and found.data.tags["optimlab.status"] == "completed"
    assert "mlflow.parentRunId" not in found.data.tags  # a single run is nobody's child
    history = client.get_metric_history(found.info.run_id, "val/acc")
    assert [(m.step, m.value) for m in history] == [(1, pytest.approx(float(r["val_acc"]))) if i == 0 else
                                                    (2, pytest.approx(float(r["val_acc"]))) for i, r in enumerate(metrics)]  # fmt: skip
    objective = client.get_metric_history(found.info.run_id, "objective")
    assert [m.value for m in objective][-1] == pytest.approx(summary["objective"]["value"])
    assert found.data.metrics["test/loss"] == pytest.approx(summary["test"]["loss"])


@pytest.mark.slow
def test_a_sweep_is_one_mlflow_parent_run_and_one_wandb_group(tmp_path):
    """A real 2-trial sweep into a real SQLite MLflow store and offline W&B: the trials are
    nested runs of the study's parent run, and share the study's W&B group."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    from test_sweep import SWEEP_TINY

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = train_cli(
        "-m", "hydra/sweeper=optimlab", "hydra.sweep.dir=multirun/s", "hydra.sweeper.study_name=lr_study",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.plots=false", *SWEEP_TINY, "epochs=2", "lr=interval(0.001,0.1)",
        "logger=[mlflow,wandb]", f"logger.mlflow.tracking_uri={uri}",
        cwd=tmp_path, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "is off" not in proc.stdout + proc.stderr  # no logger failed

    client, runs = mlflow_runs(uri)
    parents = [r for r in runs if r.data.tags.get("optimlab.role") == "study"]
    trials = sorted((r for r in runs if "mlflow.parentRunId" in r.data.tags), key=lambda r: r.info.run_name)
    assert len(parents) == 1 and len(runs) == 3, [(r.info.run_name, r.data.tags) for r in runs]
    (parent,) = parents
    assert parent.info.run_name == "lr_study" and parent.info.status == "FINISHED"
    assert [r.info.run_name for r in trials] == ["trial_0000", "trial_0001"]
    values = []
    for n, trial in enumerate(trials):
        assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert trial.data.tags["optimlab.study"] == "lr_study" and trial.data.tags["optimlab.trial"] == str(n)
        assert trial.info.status == "FINISHED"
        folder = tmp_path / "multirun" / "s" / f"trial_{n:04d}"
        summary = json.loads((folder / "summary.json").read_text())
        (lr,) = [o.split("=", 1)[1] for o in summary["overrides"] if o.startswith("lr=")]  # the trial's sampled lr
        assert float(trial.data.params["lr"]) == pytest.approx(float(lr))
        assert trial.data.metrics["objective"] == pytest.approx(summary["objective"]["value"])
        values.append(summary["objective"]["value"])

        (record_file,) = folder.glob("wandb/offline-run-*/run-*.wandb")
        wb = read_wandb(record_file)
        assert wb["run"].run_group == "lr_study" and wb["run"].job_type == "trial"
        assert wb["run"].display_name == f"trial_{n:04d}"
        assert wb["summary"]["objective"] == pytest.approx(summary["objective"]["value"])
    assert parent.data.metrics["best_objective"] == pytest.approx(max(values))


# --------------------------------------------------------------------------- W&B offline


def read_wandb(path, timeout=30.0):
    """The records of a W&B run file (``run-*.wandb``: LevelDB-log framing of W&B's own
    ``Record`` protobufs, read with wandb's schema): the run record, the config, each
    history row and the final summary, as plain Python.

    W&B's service process writes the file, and may still be flushing it when ``finish()``
    has returned in the training process: read until its exit record is there."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        found = _read_wandb_once(path)
        if found["exit"] is not None or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _read_wandb_once(path):
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block = Path(path).read_bytes(), 32768
    if len(data) < 7:
        return {"run": None, "config": {}, "history": [], "summary": {}, "exit": None}
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, "not a W&B run file"
    out = {"run": None, "config": {}, "history": [], "summary": {}, "exit": None}
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and length == 0):
            pos += left  # the rest of a block is padding
            continue
        if pos + 7 + length > len(data):
            break  # a record still being written
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):  # FIRST/MIDDLE pieces of a record
            continue
        record = pb.Record.FromString(buf)
        buf = b""
        kind_name = record.WhichOneof("record_type")
        if kind_name == "run":
            out["run"] = record.run
            out["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind_name == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind_name == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind_name == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.summary.update})
        elif kind_name == "exit":
            out["exit"] = record.exit
    return out


def test_wandb_offline_run_folder(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = ["logger=wandb", "lr=0.03", "logger.wandb.tags=[smoke]"]
    run(compose_config([*SMALL, *overrides]), str(tmp_path / "run"), overrides=overrides)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    metrics = read_csv(tmp_path / "run" / "metrics.csv")

    (record_file,) = (tmp_path / "run").glob("wandb/offline-run-*/run-*.wandb")  # what `wandb sync` uploads
    wb = read_wandb(record_file)
    assert wb["run"].project == "optimlab" and wb["run"].display_name == "run" and list(wb["run"].tags) == ["smoke"]
    assert wb["run"].job_type == "train" and not wb["run"].run_group
    assert wb["config"]["lr"] == 0.03 and wb["config"]["data"] == "synthetic" and wb["config"]["epochs"] == 2
    rows = [h for h in wb["history"] if "epoch" in h]
    assert [h["epoch"] for h in rows] == [1, 2]
    for h, m in zip(rows, metrics):
        for field, tag in LOGGER_TAGS.items():
            assert h[tag] == pytest.approx(float(m[field]), rel=1e-6), tag
    assert wb["summary"]["status"] == "completed"
    assert wb["summary"]["test/acc"] == pytest.approx(summary["test"]["acc"])
    assert wb["summary"]["test_weights"] == f"best epoch {summary['test']['epoch']}"
    assert wb["summary"]["objective"] == pytest.approx(summary["objective"]["value"])
    assert wb["exit"] is not None and wb["exit"].exit_code == 0


def test_trackers_environment_variables_are_honoured_unless_the_config_sets_the_key(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI, WANDB_PROJECT and WANDB_DIR are used where conf/logger leaves the
    key null (its default); a key set in the config wins over them."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    env_uri, config_uri = f"sqlite:///{tmp_path}/env.db", f"sqlite:///{tmp_path}/config.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "from_env")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_env"))
    overrides = ["logger=[mlflow,wandb]"]
    run(compose_config([*SMALL, *overrides]), str(tmp_path / "env"), overrides=overrides)
    assert [r.data.tags["optimlab.run_dir"] for r in mlflow_runs(env_uri)[1]] == [str(tmp_path / "env")]
    assert not (tmp_path / "mlflow.db").exists() and not list((tmp_path / "env").glob("wandb"))
    (record,) = (tmp_path / "wandb_env").glob("wandb/offline-run-*/run-*.wandb")
    assert read_wandb(record)["run"].project == "from_env"

    overrides = ["logger=[mlflow,wandb]", f"logger.mlflow.tracking_uri={config_uri}", "logger.wandb.project=mine",
                 f"logger.wandb.dir={tmp_path / 'set'}"]  # fmt: skip
    run(compose_config([*SMALL, *overrides]), str(tmp_path / "set"), overrides=overrides)
    assert [r.data.tags["optimlab.run_dir"] for r in mlflow_runs(config_uri)[1]] == [str(tmp_path / "set")]
    assert len(mlflow_runs(env_uri)[1]) == 1
    (record,) = (tmp_path / "set").glob("wandb/offline-run-*/run-*.wandb")
    assert read_wandb(record)["run"].project == "mine"


# --------------------------------------------------------------------------- failing loggers


@pytest.mark.slow
def test_an_unreachable_tracking_server_is_one_warning(tmp_path):
    pytest.importorskip("mlflow")
    proc = train_cli(*SMALL, "logger=[mlflow,csv]", "logger.mlflow.tracking_uri=http://127.0.0.1:9",
                     "hydra.run.dir=run", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "logger mlflow" in line]
    assert len(lines) == 1 and "could not start" in lines[0] and "127.0.0.1:9" in lines[0], lines
    assert_complete(tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("package", ["wandb", "mlflow"])
def test_a_missing_package_is_one_warning(tmp_path, package):
    env = {"OPTIMLAB_BLOCK_IMPORT": package, "PYTHONPATH": os.pathsep.join(filter(None, [FAULTS, os.environ.get("PYTHONPATH")]))}
    proc = train_cli(*SMALL, f"logger=[{package},csv]", "hydra.run.dir=run", cwd=tmp_path,
                     env={**env, "WANDB_MODE": "offline"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if f"logger {package}" in line]
    assert len(lines) == 1 and f"No module named '{package}'" in lines[0] and "install" in lines[0], lines
    assert_complete(tmp_path / "run")


@pytest.mark.slow
def test_a_failing_logger_never_stops_a_sweep(tmp_path):
    from test_sweep import SWEEP_TINY

    env = {"OPTIMLAB_BLOCK_IMPORT": "wandb", "PYTHONPATH": os.pathsep.join(filter(None, [FAULTS, os.environ.get("PYTHONPATH")]))}
    proc = train_cli("-m", "hydra/sweeper=optimlab", "hydra.sweep.dir=multirun/s", "hydra.sweeper.n_trials=2",
                     "hydra.sweeper.plots=false", *SWEEP_TINY, "epochs=2", "checkpoint.every=1", "lr=interval(0.001,0.1)",
                     "logger=[wandb,csv]", cwd=tmp_path, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "logger wandb is off" in line]
    assert len(lines) == 2, lines  # one line per trial
    for n in range(2):
        assert_complete(tmp_path / "multirun" / "s" / f"trial_{n:04d}")


def assert_complete(folder):
    """The run folder of a run that trained to the end, whatever its loggers did."""
    assert json.loads((folder / "summary.json").read_text())["status"] == "completed"
    assert len(read_csv(folder / "metrics.csv")) == 2
    assert (folder / "checkpoint.pt").is_file() and (folder / ".hydra" / "config.yaml").is_file()
    assert [r["epoch"] for r in read_csv(folder / "log.csv")] == ["1", "2", "end"]  # the other logger went on


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("logger.wandb.mode=sometimes", r"^logger\.wandb\.mode='sometimes' is not valid: must be one of offline, online, disabled, shared$"),
        ("logger.mlflow.http_retries=-1", r"^logger\.mlflow\.http_retries=-1 is not valid: must be an integer >= 0$"),
    ],
)
def test_bad_logger_keys_are_one_line_before_any_work(override, expected):
    from optimlab.config import validate
    from optimlab.errors import ConfigError

    with pytest.raises(ConfigError, match=expected):
        validate(compose_config([*TINY, "logger=[wandb,mlflow]", override]))


def test_a_plain_path_as_mlflow_tracking_uri_is_a_file_store(tmp_path, monkeypatch):
    """MLflow reads a plain path as its file store: optimlab allows that store for the run,
    as it does for a file: URI, rather than the tracker turning itself off."""
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "mlruns"))
    overrides = ["logger=mlflow"]
    run(compose_config([*SMALL, *overrides]), str(tmp_path / "run"), overrides=overrides)
    (tag,) = (tmp_path / "mlruns").glob("*/*/tags/optimlab.run_dir")  # the file store's one run
    assert tag.read_text() == str(tmp_path / "run")
