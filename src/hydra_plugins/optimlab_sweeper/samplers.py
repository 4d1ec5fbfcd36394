"""The samplers of ``hydra/sweeper/sampler=…``: the same names and keys as hydra-optuna-sweeper's
(tpe, random, cmaes, nsgaii, motpe, grid), so a config written for it selects the same sampler;
and Optuna's GPSampler (gp).

Each is built with ``hydra.utils.instantiate``; keys Optuna has deprecated since are dropped
at their defaults (optimlab.sweeping.upstream.sampler_kwargs)."""

from dataclasses import dataclass
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class SamplerConfig:
    _target_: str = MISSING


@dataclass
class GridSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.GridSampler"
    # the grid comes from hydra.sweeper.params at run time
    _partial_: bool = True


@dataclass
class TPESamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = None
    consider_prior: bool = True
    prior_weight: float = 1.0
    consider_magic_clip: bool = True
    consider_endpoints: bool = False
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    warn_independent_sampling: bool = True


@dataclass
class RandomSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = None


@dataclass
class CmaEsSamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: Optional[int] = None
    x0: Optional[Dict[str, Any]] = None
    sigma0: Optional[float] = None
    independent_sampler: Optional[Any] = None
    warn_independent_sampling: bool = True
    consider_pruned_trials: bool = False
    restart_strategy: Optional[Any] = None
    inc_popsize: int = 2
    use_separable_cma: bool = False
    source_trials: Optional[Any] = None


@dataclass
class NSGAIISamplerConfig(SamplerConfig):
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: Optional[int] = None
    population_size: int = 50
    mutation_prob: Optional[float] = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5
    constraints_func: Optional[Any] = None


@dataclass
class GPSamplerConfig(SamplerConfig):
    """Optuna's Gaussian-process sampler (not in hydra-optuna-sweeper): for small continuous
    spaces. It models COMPLETE trials only, so pruned trials teach it nothing."""

    _target_: str = "optuna.samplers.GPSampler"
    seed: Optional[int] = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False


@dataclass
class MOTPESamplerConfig(TPESamplerConfig):
    """Optuna 4 folded MOTPE into TPESampler: it is the multi-objective TPE."""


SAMPLERS = {
    "tpe": TPESamplerConfig, "random": RandomSamplerConfig, "cmaes": CmaEsSamplerConfig,
    "nsgaii": NSGAIISamplerConfig, "motpe": MOTPESamplerConfig, "grid": GridSamplerConfig,
    "gp": GPSamplerConfig,
}  # fmt: skip

for _name, _node in SAMPLERS.items():
    ConfigStore.instance().store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="optimlab_sweeper")
