"""hydra-optuna-sweeper's search-space language, in one place.

optimlab's sweeper accepts the upstream plugin's config keys and search-space syntax
(``hydra.sweeper.params``, the deprecated ``search_space``, ``custom_search_space``,
``direction``, grid sampling) and turns them into Optuna objects of today's API
(``FloatDistribution``, ``IntDistribution``, ``trial.suggest_*``).

optimlab does not import the upstream plugin: it pins ``optuna<3``, so a package that
required it could not be installed next to Optuna 4+. The rules below are the upstream
parser's (``choice``, ``range``, ``shuffle``, ``interval``, ``int(...)``, ``tag(log, ...)``),
read through Hydra's public override parser.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.utils import instantiate
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import Trial

from optimlab.config.overrides import quote  # noqa: F401  (re-exported: every generated value passes through it)

SEARCH_SPACE_DOCS = "https://hydra.cc/docs/upgrades/1.1_to_1.2/changes_to_sweeper_config/"


def distribution_from_override(override: Override) -> BaseDistribution | str:
    """One command-line value as the upstream plugin reads it: a sweep is a distribution,
    anything else the fixed value's text."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():  # range(start, stop, step): a stepped uniform distribution
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop, step=value.step)
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
    if override.is_interval_sweep():  # interval(a, b): int when both ends are; tag(log, …): log scale
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(int(value.start), int(value.end), log=log)
        return FloatDistribution(value.start, value.end, log=log)
    raise ValueError(f"{override.input_line}: not a search space the sweeper knows (choice, range, interval)")


def params_from_overrides(lines: Sequence[str]) -> tuple[dict[str, BaseDistribution], dict[str, Any]]:
    """``key=choice(…)``-style lines → (distributions, fixed values), as the upstream plugin."""
    found: dict[str, BaseDistribution] = {}
    fixed: dict[str, Any] = {}
    for override in OverridesParser.create().parse_overrides(list(lines)):
        value = distribution_from_override(override)
        (found if isinstance(value, BaseDistribution) else fixed)[override.get_key_element()] = value
    return found, fixed


def distribution_from_config(cfg: Mapping[str, Any]) -> BaseDistribution:
    """One entry of the deprecated ``hydra.sweeper.search_space``:
    ``{type: int|float|categorical, low, high, log, step, choices}``."""
    kind, low, high = str(cfg["type"]), cfg.get("low"), cfg.get("high")
    log, step = bool(cfg.get("log", False)), cfg.get("step")
    if kind == "categorical":
        return CategoricalDistribution(list(cfg["choices"]))
    if kind == "int":
        return IntDistribution(int(low), int(high), log=log, step=1 if log or step is None else int(step))
    if kind == "float":
        return FloatDistribution(low, high, log=log, step=None if log else step)
    raise ValueError(f"search_space type={kind!r}: must be int, float or categorical")


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
    found, fixed = params_from_overrides(lines)
    legacy = {}
    if search_space_cfg is not None and params is not None:
        warnings.warn("Both hydra.sweeper.params and hydra.sweeper.search_space are configured: "
                      f"the sweep uses hydra.sweeper.params ({SEARCH_SPACE_DOCS})", UserWarning, stacklevel=2)  # fmt: skip
    elif search_space_cfg is not None:
        warnings.warn(f"hydra.sweeper.search_space is deprecated; use hydra.sweeper.params ({SEARCH_SPACE_DOCS})",
                      UserWarning, stacklevel=2)  # fmt: skip
        legacy = {str(k): distribution_from_config(v) for k, v in search_space_cfg.items()}
    distributions = {k: d for k, d in {**legacy, **found}.items() if k not in fixed}
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


