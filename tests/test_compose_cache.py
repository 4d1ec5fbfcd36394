"""The sweeper composes a sweep's jobs once per shape (sweeping/compose.py): every job it
serves from a copy must equal, key for key, what Hydra's own load_sweep_config composes."""

from __future__ import annotations

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.plugins import Plugins
from hydra.types import RunMode
from omegaconf import OmegaConf

from optimlab.config import CONFIG_DIR, CONFIG_NAME
from optimlab.sweeping.compose import ComposeCache


class Counting:
    """Hydra's loader, counting the compositions that reach it."""

    def __init__(self, loader):
        self.loader, self.calls = loader, 0

    def load_sweep_config(self, master, overrides):
        self.calls += 1
        return self.loader.load_sweep_config(master, overrides)


def job(i: int, *extra: str) -> list[str]:
    return [f"lr={0.001 * (i + 1)}", f"momentum={0.1 * i}", *extra, "hydra.sweep.dir='multirun/x'",
            f"hydra.sweep.subdir=trial_{i:04d}", f"++hydra.job.env_set.OPTIMLAB_TRIAL='{{\"number\": {i}}}'"]


def test_cached_compositions_equal_hydras_own():
    Plugins.instance()  # registers the sweepers' config schemas, as an app's start does
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONFIG_DIR)))
    master = loader.load_configuration(
        config_name=CONFIG_NAME, run_mode=RunMode.MULTIRUN,
        overrides=["hydra/sweeper=optimlab", "sweep=lr_momentum_fast", "hydra.sweeper.n_trials=4", "data=synthetic", "epochs=3"],
    )  # fmt: skip
    counting = Counting(loader)
    cache = ComposeCache(counting)
    jobs = [job(i) for i in range(4)] + [job(4, "optimizer=adam"), job(5, "optimizer=adam"), job(6, "optimizer=sgd"),
                                         job(7, "+extra_key=1"), job(8, "batch_size=16")]  # fmt: skip
    for overrides in jobs:
        got = cache.load_sweep_config(master, list(overrides))
        want = loader.load_sweep_config(master, list(overrides))
        assert OmegaConf.to_container(got, resolve=False) == OmegaConf.to_container(want, resolve=False), overrides
        assert list(got.hydra.overrides.hydra)[:2] == ["hydra/sweeper=optimlab", "hydra.sweeper.n_trials=4"]
        assert OmegaConf.is_struct(got) and got.lr == want.lr and got.hydra.job.override_dirname == want.hydra.job.override_dirname
    # the four value-only jobs share one composition, the two adam jobs another; another
    # group choice (sgd), an added key or another set of keys composes afresh
    assert counting.calls == 5
