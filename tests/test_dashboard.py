"""optuna-dashboard serves a real study file: its API lists the study and its trials."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_dashboard_lists_study_and_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="optimlab", storage=storage, direction="maximize")
    study.optimize(lambda t: 1 - (t.suggest_float("lr", 1e-3, 0.3, log=True) - 0.05) ** 2, n_trials=4)

    exe = Path(sys.executable).parent / "optuna-dashboard"
    exe = str(exe) if exe.exists() else shutil.which("optuna-dashboard")
    assert exe, "optuna-dashboard is not installed"
    port = free_port()
    server = subprocess.Popen(
        [exe, storage, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = get_json(f"{base}/api/studies")["study_summaries"]
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "optuna-dashboard did not answer within 60 s"
                time.sleep(0.3)
        assert [s["study_name"] for s in studies] == ["optimlab"]
        detail = get_json(f"{base}/api/studies/{studies[0]['study_id']}")
        trials = detail["trials"]
        assert [t["number"] for t in trials] == [0, 1, 2, 3]
        assert all(t["state"] == "Complete" for t in trials)
        assert {t["number"]: t["values"][0] for t in trials} == pytest.approx(
            {t.number: t.value for t in study.trials}
        )
        assert detail["best_trials"][0]["number"] == study.best_trial.number
        assert [p["name"] for p in trials[0]["params"]] == ["lr"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
