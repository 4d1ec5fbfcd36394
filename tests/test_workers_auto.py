"""``n_workers: auto``: how many workers for where the trials train (a real sweep with it:
tests/test_six_commands.py, through the sweep=lr_momentum_fast preset)."""

from __future__ import annotations

from test_sweep import sweep

from optimlab.sweeping import workers


def test_auto_count_follows_the_device():
    assert workers.auto_count("cuda", 20, ["0", "1", "2"])[0] == 3
    assert workers.auto_count("cuda", 20, [])[0] == 1
    assert workers.auto_count("cpu", 20, [])[0] == workers.cores()
    assert workers.auto_count("cpu", 1, [])[0] == 1  # never more workers than trials
    assert workers.auto_count("mps", 20, [])[0] == 1


def test_a_bad_worker_count_is_one_line_naming_auto(tmp_path):
    proc = sweep(tmp_path, "lr=interval(0.01,0.1)", "hydra.sweeper.n_workers=many")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "hydra.sweeper.n_workers=many" in errors[0] and "or auto" in errors[0]
    assert not (tmp_path / "multirun").exists()
