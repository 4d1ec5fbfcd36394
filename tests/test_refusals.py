"""A command refused by its checks leaves nothing behind: no new run folder, and nothing
else changed."""

from __future__ import annotations

import pytest
from conftest import TINY, TRAIN_PY, run_python
from conftest import train_cli as _train


@pytest.mark.slow
def test_a_bad_single_run_leaves_no_folder_behind(tmp_path):
    result = _train(*TINY, "lr=-1", cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "lr=-1 is not valid: must be a finite number > 0" in out and "Traceback" not in out, out
    assert list(tmp_path.iterdir()) == [], f"left behind: {sorted(tmp_path.rglob('*'))}"

    # a folder that holds something of its own keeps it, and keeps existing
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine\n")
    result = _train(*TINY, "lr=-1", f"hydra.run.dir={keep}", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert (keep / "notes.txt").read_text() == "mine\n"
    assert not (keep / "metrics.csv").exists() and not (keep / "checkpoint.pt").exists()


@pytest.mark.slow
def test_a_sweep_without_a_search_space_is_refused_before_anything_is_written(tmp_path):
    result = _train("-m", *TINY, "hydra/sweeper=optimlab", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    lines = [line for line in out.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and "no search space" in lines[0] and "seed=range(0,5)" in lines[0], out
    assert "Traceback" not in out and not (tmp_path / "sweep").exists(), out


@pytest.mark.slow
def test_a_folder_name_too_long_for_the_file_system_is_one_line(tmp_path):
    long = "x" * 300
    run = _train(*TINY, f"hydra.run.dir=out/{long}", cwd=tmp_path)
    sweep = _train("-m", *TINY, "hydra/sweeper=optimlab", "lr=interval(0.01,0.1)", "hydra.sweeper.n_trials=1",
                   f"hydra.sweep.dir=out/{long}", cwd=tmp_path)  # fmt: skip
    for result, words in ((run, "longer than the file system allows"), (sweep, "more than the file system allows")):
        out = result.stdout + result.stderr
        assert result.returncode == 2, out[-3000:]
        assert "Traceback" not in out and words in out and "shorter" in out, out[-3000:]
    assert not list(tmp_path.rglob("*.yaml")), "nothing written"


# a sweep's bad input, each found by a check that needs no model: refused before torch is imported
BEFORE_TORCH = {
    "a_value": ["weight_decay=-1"],
    "a_search_space": ["momentum=interval(0.9,0.5)"],
    "a_rule_of_the_dataset": ["data.augment.crop_padding=40"],
    "a_sweeper_setting": ["hydra.sweeper.n_trials=0"],
    "a_storage": ["hydra.sweeper.storage=bogus://x"],
}


@pytest.mark.parametrize("case", list(BEFORE_TORCH))
def test_a_bad_sweep_input_is_refused_before_torch_is_imported(tmp_path, case):
    args = ["-m", *TINY, "hydra/sweeper=optimlab", "optimizer=momentum", "lr=interval(0.01,0.1)",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", *BEFORE_TORCH[case]]  # fmt: skip
    result = run_python("-X", "importtime", str(TRAIN_PY), *args, cwd=tmp_path)  # a new interpreter: its imports
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    assert "torch" not in imported, f"torch was imported before the refusal: {errors[0]}"
    assert not (tmp_path / "sweep").exists()
