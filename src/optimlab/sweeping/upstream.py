"""Everything optimlab takes from hydra-optuna-sweeper, in one place.

optimlab's sweeper accepts the upstream plugin's config keys and search-space syntax
(``hydra.sweeper.params``, the deprecated ``search_space``, ``custom_search_space``,
``direction``, grid sampling). This module turns them into Optuna objects of today's API
(``FloatDistribution``, ``IntDistribution``, ``trial.suggest_*``), so an upgrade of the
upstream plugin (Hydra 1.4 changed ``create_params_from_overrides`` and removed
``search_space``) touches this file only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper import _impl
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf  # noqa: F401  (optimlab's schema extends it)
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import Trial

from optimlab.config.overrides import quote  # noqa: F401  (re-exported: every generated value passes through it)

SEARCH_SPACE_DOCS = "https://hydra.cc/docs/upgrades/1.1_to_1.2/changes_to_sweeper_config/"


def modern(dist: BaseDistribution) -> BaseDistribution:
    """The upstream parser builds Optuna's pre-3.0 classes (deprecated, and refused by
    Optuna's retry of dead workers' trials); the same distribution in today's classes."""
    if isinstance(dist, CategoricalDistribution):
        return CategoricalDistribution(dist.choices)
    if isinstance(dist, IntDistribution):
        return IntDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, FloatDistribution):
        return FloatDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
    return dist


@dataclass
class SearchSpace:
    """What each trial samples, what is fixed, and an optional user extender."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    extender: Callable[[DictConfig, Trial], None] | None = None

    def configure(self, trial: Trial, config: DictConfig) -> list[str]:
        """Sample ``trial``'s params (public ``suggest_*`` API) and return its overrides."""
        for name, dist in self.distributions.items():
            suggest(trial, name, dist)
        for name, value in self.fixed.items():
            trial.set_user_attr(name, value)
        if self.extender is not None:
            self.extender(config, trial)  # adds (conditional) params of its own
        overlap = trial.params.keys() & self.fixed.keys()
        if overlap:
            raise ValueError(f"these keys are both fixed and searched: {sorted(overlap)}")
        # a sampled string stays a string (a choice such as 8e771234 or inf would parse as a float)
        sampled = [f"{name}={quote(v) if isinstance(v, str) else v}" for name, v in trial.params.items()]
        return sampled + [f"{name}={value}" for name, value in self.fixed.items()]

    def grid(self) -> dict[str, list[Any]]:
        """The values a GridSampler walks through (discrete distributions only)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return {name: _to_grid(dist) for name, dist in self.distributions.items()}


def suggest(trial: Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    raise TypeError(f"{name}: unsupported distribution {dist!r}")


def _to_grid(dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    step = dist.step if isinstance(dist, (IntDistribution, FloatDistribution)) else None
    if step is None or getattr(dist, "log", False):
        raise ValueError("grid search needs discrete values: use choice(...) or range(...) for every swept key")
    n_items = int((dist.high - dist.low) // step)  # Hydra's range(start, stop): stop excluded
    return [dist.low + i * step for i in range(n_items)]


def search_space(
    params: Mapping[str, Any] | None,
    search_space_cfg: Mapping[str, Any] | None,
    custom_search_space: str | None,
    arguments: Sequence[str],
) -> SearchSpace:
    """The search space from ``hydra.sweeper.params`` + command-line sweeps, the deprecated
    ``hydra.sweeper.search_space`` (used only when ``params`` is not given, as upstream),
    and ``custom_search_space`` (a function ``(cfg, trial) -> None``)."""
    lines = [f"{k!s}={v}" for k, v in (params or {}).items()] + list(arguments)
    with warnings.catch_warnings():  # the upstream parser builds pre-3.0 Optuna classes
        warnings.simplefilter("ignore", FutureWarning)
        found, fixed = _impl.create_params_from_overrides(lines)
        legacy = {}
        if search_space_cfg and not params:
            warnings.warn(
                f"hydra.sweeper.search_space is deprecated; use hydra.sweeper.params ({SEARCH_SPACE_DOCS})",
                UserWarning,
                stacklevel=2,
            )
            legacy = {str(k): _impl.create_optuna_distribution_from_config(v) for k, v in search_space_cfg.items()}
    distributions = {k: modern(d) for k, d in {**legacy, **found}.items() if k not in fixed}
    extender = instantiate({"_target_": custom_search_space, "_partial_": True}) if custom_search_space else None
    return SearchSpace(distributions, fixed, extender)


# Sampler arguments that hydra-optuna-sweeper's schema always passes (at its defaults) and
# Optuna has since deprecated (a FutureWarning on every sweep): dropped when left at the
# upstream default, so Optuna's own default applies; a value the user set is passed on.
DEPRECATED_SAMPLER_ARGS = {
    "optuna.samplers.TPESampler": {
        "consider_prior": True, "prior_weight": 1.0, "consider_magic_clip": True,
        "consider_endpoints": False, "warn_independent_sampling": True,
    },
}  # fmt: skip


def sampler_kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    """The sampler config without upstream defaults of arguments Optuna deprecated."""
    stale = DEPRECATED_SAMPLER_ARGS.get(str(cfg.get("_target_")), {})
    return {k: v for k, v in cfg.items() if not (k in stale and v == stale[k])}


