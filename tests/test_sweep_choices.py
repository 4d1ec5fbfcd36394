"""Sweep choices beside hydra-optuna-sweeper's: ``n_workers: auto`` (how many workers for where
the trials train; a real sweep with it: tests/test_six_commands.py, through the
sweep=lr_momentum_fast preset) and ``hydra/sweeper/sampler=gp`` (Optuna's GPSampler)."""

from __future__ import annotations

import optuna
from conftest import CONF_DIR
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_sweep import sweep

from optimlab.sweeping import upstream, workers


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


def test_the_gp_sampler_is_optunas_seeded_gpsampler():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="config", return_hydra_config=True, overrides=[
            "hydra/sweeper=optimlab", "hydra/sweeper/sampler=gp", "hydra.sweeper.sampler.seed=3",
            "hydra.sweeper.sampler.n_startup_trials=2",
        ])  # fmt: skip
    kwargs = upstream.sampler_kwargs(OmegaConf.to_container(cfg.hydra.sweeper.sampler, resolve=True))
    picks = []
    for _ in range(2):  # the same seed picks the same points, the GP's own among them
        study = optuna.create_study(sampler=instantiate(kwargs))
        assert isinstance(study.sampler, optuna.samplers.GPSampler)
        study.optimize(lambda t: (t.suggest_float("lr", 1e-3, 0.3, log=True) - 0.05) ** 2, n_trials=4)
        picks.append([t.params for t in study.trials])
    assert picks[0] == picks[1]
