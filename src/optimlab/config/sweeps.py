"""Checks of a sweep's configuration that run before any trial starts.

:func:`validate_search_space` checks a search space (``hydra.sweeper.params`` or sweep
overrides on the command line): every key exists in the config (or is a config group
with those options), intervals have low < high, log scales have low > 0, and every
endpoint or choice is a value the config accepts. :class:`SweepChecks` is a Hydra
callback (registered in ``conf/config.yaml``) that runs these checks, the base config's
checks and the sampler/pruner lookup from ``on_multirun_start``, i.e. before the sweeper
launches anything, whichever sweeper is in use. Every check but the models' comes first and
needs no torch, so a bad value is refused in about a second; the model check (which
imports torch) follows, or with optimlab's sweeper comes from the sweeper once it has
checked its folder and storage (:func:`models_deferred`).
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from optimlab.config import knobs
from optimlab.config.checks import validate
from optimlab.config.hints import closest
from optimlab.errors import ConfigError, SweepConfigError
from optimlab.objective import DIRECTIONS

try:  # Hydra >= 1.1
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]


_ABSENT = object()


def _did_you_mean(word: str, candidates) -> str:
    found = closest(word, candidates)
    return f"; did you mean {found!r}?" if found else ""


def _parse(key: str, spec: Any):
    """A search-space entry as Hydra's override grammar reads it (sweep object or value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not isinstance(spec, str):
        if isinstance(spec, (list, ListConfig)):
            spec = ",".join(str(v) for v in spec)
        else:
            return spec  # already parsed (a Sweep object) or a plain value
    try:
        return OverridesParser.create().parse_override(f"{key}={spec}").value()
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SweepConfigError(f"search space {key}={spec!r} cannot be parsed: {first}") from None


def _group_options(group: str) -> list[str] | None:
    from hydra.core.global_hydra import GlobalHydra

    if not GlobalHydra.instance().is_initialized():
        return None
    return list(GlobalHydra.instance().config_loader().get_group_options(group))


def _job_config(cfg: DictConfig) -> DictConfig:
    """A writable copy of ``cfg`` without Hydra's node."""
    job = copy.deepcopy(cfg)
    OmegaConf.set_readonly(job, False)
    OmegaConf.set_struct(job, False)
    job.pop("hydra", None)
    return job


def validate_search_space(
    params: Mapping[str, Any], cfg: DictConfig, choices: Mapping[str, str] | None = None, *, models: bool = True
) -> None:
    """Raise ConfigError if the search space ``params`` (key → sweep spec) cannot be swept over ``cfg``.

    ``params`` values may be strings in Hydra's override grammar (``interval(1e-4, 0.1)``,
    ``tag(log, interval(...))``, ``range(1, 10)``, ``choice(a, b)``, ``a,b``), parsed sweep
    objects, lists or plain values. ``choices`` are the config groups (group → chosen option);
    by default ``cfg.hydra.runtime.choices`` when ``cfg`` has Hydra's node. ``models=False``:
    without the model check (:func:`~optimlab.config.checks.validate`'s, which imports torch).
    """
    if choices is None:
        hydra_node = cfg.get("hydra") if "hydra" in cfg else None
        choices = dict(hydra_node.runtime.choices) if hydra_node is not None else {}
    job = _job_config(cfg)
    for raw_key, spec in params.items():
        key = str(raw_key)
        adding = key.startswith("+")
        key = key.lstrip("+~")
        value = _parse(key, spec)
        where = f"search space {key}={spec}"
        if key in choices:  # a config group: its options must exist
            _check_group_options(key, value, where)
            continue
        if not adding and OmegaConf.select(job, key, default=_ABSENT, throw_on_missing=False) is _ABSENT:
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(job, parent) if parent else job
            known = list(node.keys()) if isinstance(node, DictConfig) else []
            raise SweepConfigError(
                f"{where}: the key {key!r} does not exist in the config{_did_you_mean(leaf, known)} "
                f"(use +{key} to add a new key)"
            )
        # Every endpoint / option must be a value a single run accepts.
        for candidate in _candidates(value, where):
            trial = copy.deepcopy(job)
            OmegaConf.update(trial, key, candidate, merge=False, force_add=True)
            try:
                validate(trial, models=models)
            except ConfigError as e:
                raise SweepConfigError(f"{where}: {e}") from None


def _check_group_options(key: str, value: Any, where: str) -> None:
    from hydra.core.override_parser.types import ChoiceSweep

    options = _group_options(key)
    if options is None:
        return
    for v in value.list if isinstance(value, ChoiceSweep) else [value]:
        if str(v) not in options:
            raise SweepConfigError(
                f"{where}: {v!r} is not an option of {key}; choose from {', '.join(options)}{_did_you_mean(str(v), options)}"
            )


def _candidates(value: Any, where: str) -> list[Any]:
    """The values a sweep spec reaches at its ends (an interval's bounds, a range's first and
    last, every option of a choice); SweepConfigError when the spec itself is empty or inverted."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if low is None or high is None or not low < high:
            raise SweepConfigError(f"{where}: interval needs low < high, got low={low}, high={high}")
        if "log" in (value.tags or set()) and low <= 0:
            raise SweepConfigError(f"{where}: a log-scale interval needs low > 0, got low={low}")
        if isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool):
            return [low, high]
        return [float(low), float(high)]
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if step is None or step <= 0 or not start < stop:
            raise SweepConfigError(f"{where}: range needs start < stop and step > 0, got {start}, {stop}, {step}")
        if "log" in (value.tags or set()) and start <= 0:
            raise SweepConfigError(f"{where}: a log-scale range needs start > 0, got start={start}")
        return [start, stop - step if isinstance(stop, int) and isinstance(step, int) else start]
    if isinstance(value, ChoiceSweep):
        if not value.list:
            raise SweepConfigError(f"{where}: choice needs at least one option")
        return list(value.list)
    return [value]


def _check_target(node: Any, what: str) -> None:
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    from hydra.utils import get_class

    target = node._target_
    try:
        get_class(target)
    except Exception:
        raise SweepConfigError(
            f"hydra.sweeper.{what}._target_={target!r} is not a known {what}: choose one with "
            f"hydra/sweeper/{what}=<option> (see the options Hydra lists for that group)"
        ) from None


def sweep_overrides(config: DictConfig) -> dict[str, Any]:
    """The sweeps given on the command line (``key=a,b``, ``key=interval(...)``), key → parsed value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    found: dict[str, Any] = {}
    parser = OverridesParser.create()
    for line in config.hydra.overrides.task:
        try:
            (o,) = parser.parse_overrides([line])
        except Exception:
            continue
        if o.is_sweep_override():
            found[("+" if o.is_add() else "") + o.key_or_group] = line.split("=", 1)[1]
    return found


NO_PRUNER = "optuna.pruners.NopPruner"


def check_objectives(directions: list[str], pruner_cfg: Any, pruner_choice: str | None = None) -> None:
    """A sweeper's directions are Optuna's, and a pruner only prunes one objective.

    Optuna's ``Trial.report`` (hence every pruner) refuses multi-objective studies, so a
    pruner with several directions would stop nothing: refused before the first trial."""
    if not directions or any(d not in DIRECTIONS for d in directions):
        raise SweepConfigError(
            f"hydra.sweeper.direction={directions} is not valid: must be maximize, minimize or a list of them "
            "(one per value the task returns)"
        )
    target = pruner_cfg.get("_target_") if isinstance(pruner_cfg, (DictConfig, Mapping)) else None
    if len(directions) > 1 and target and target != NO_PRUNER:
        name = f"hydra/sweeper/pruner={pruner_choice}" if pruner_choice else f"hydra.sweeper.pruner._target_={target}"
        raise SweepConfigError(
            f"{name} cannot prune a sweep with {len(directions)} objectives (direction={directions}): "
            "Optuna prunes single-objective studies only; add hydra/sweeper/pruner=none"
        )


def refuse(error: ConfigError) -> None:
    """Print ``error`` as one line and exit with its code (from a Hydra callback or sweeper,
    where Hydra would print a traceback or exit 1)."""
    sys.stderr.write(f"Error: {error}\n")
    sys.stderr.flush()
    raise SystemExit(error.exit_code) from None


def _objective_count(config: DictConfig, sweeper: Any) -> None:
    """An explicit hydra.sweeper.direction has one direction per objective the run returns."""
    direction = sweeper.get("direction") if isinstance(sweeper, DictConfig) else None
    objective = config.get("objective")
    if direction is None or objective is None:  # no Optuna sweeper, or one that takes the objective's
        return
    from optimlab import objective as objectives

    directions = objectives.directions(direction)
    metrics, _ = objectives.targets(objective)
    if len(directions) != len(metrics):
        key = "objective.metrics" if objective.get("metrics") else "objective.metric"
        raise SweepConfigError(
            f"hydra.sweeper.direction={directions} has {len(directions)} direction(s) but the run returns "
            f"{len(metrics)} value(s) ({key}={metrics}): give one direction per metric, or leave "
            "hydra.sweeper.direction unset (hydra/sweeper=optimlab then takes the objective's)"
        )


class SweepChecks(Callback):
    """Hydra callback: check the whole sweep before the sweeper launches its first trial.

    Hydra turns an exception raised by a callback into a warning and goes on, so a
    failed check prints its one-line message and exits (code 2) itself.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self.check(config)
            if not models_deferred(config):
                self.check_models(config)
        except ConfigError as e:
            refuse(e)

    def check(self, config: DictConfig) -> None:
        """Every check but the models' (no torch: a bad value is one line in about a second),
        then the sampler's and pruner's classes (importing them imports optuna)."""
        sweeper = config.hydra.sweeper
        if isinstance(sweeper, DictConfig):
            check_sweeper(sweeper)  # optimlab's sweeper checks them again itself (also in apps without this callback)
        self._check(config, models=False)
        if isinstance(sweeper, DictConfig) and sweeper.get("_target_") != OPTIMLAB_SWEEPER:
            check_settings(sweeper)

    def check_models(self, config: DictConfig) -> None:
        """The check that imports torch: does each trial's model take its images (the base
        config's, and each endpoint or option of the search space)."""
        self._check(config, models=True)

    def _check(self, config: DictConfig, *, models: bool) -> None:
        job = _job_config(config)
        choices = dict(config.hydra.runtime.choices)
        sweeper = config.hydra.sweeper
        params = dict(sweeper.get("params") or {}) if isinstance(sweeper, DictConfig) else {}
        cli_sweeps = sweep_overrides(config)
        swept = {k.lstrip("+") for k in [*params, *cli_sweeps]}
        try:
            validate_base(job, swept, models=models)
        except ConfigError as e:
            raise SweepConfigError(f"every trial would fail: {e}") from None
        validate_search_space({**params, **cli_sweeps}, config, choices=choices, models=models)
        if not models:
            _check_unread(job, swept, choices)
            _objective_count(config, sweeper)


SWEEP_CHECKS = f"{__name__}.SweepChecks"


def models_deferred(config: DictConfig) -> bool:
    """Whether :class:`SweepChecks` leaves its model checks to the sweeper: optimlab's sweeper
    asks for them (:meth:`SweepChecks.check_models`) once its storage and folder are checked,
    so those are refused without waiting for torch too."""
    sweeper = config.hydra.get("sweeper")
    callbacks = config.hydra.get("callbacks") or {}
    ours = any(isinstance(c, DictConfig) and c.get("_target_") == SWEEP_CHECKS for c in callbacks.values())
    return ours and isinstance(sweeper, DictConfig) and sweeper.get("_target_") == OPTIMLAB_SWEEPER


def _check_unread(job: DictConfig, swept: set[str], choices: Mapping[str, Any]) -> None:
    """A swept knob that the chosen options never read: every trial would be the same run."""
    # a swept group option may read the knob the base config does not: then no verdict
    unread = [] if any(k in choices for k in swept) else knobs.unread(job, swept)
    if unread:
        key = unread[0]
        raise SweepConfigError(
            f"search space {key}: the chosen config never reads {key} (e.g. optimizer="
            f"{choices.get('optimizer')} has no {key}), so every trial would be the same run; "
            f"pick a group option that uses it (optimizer=momentum, nesterov, adam, adamw, rmsprop) or drop {key} from the sweep"
        )


OPTIMLAB_SWEEPER = "hydra_plugins.optimlab_sweeper.optimlab_sweeper.OptimlabSweeper"


def check_settings(sweeper: DictConfig) -> None:
    """``hydra.sweeper``'s keys, its sampler and its pruner (one line for the first bad one)."""
    check_sweeper(sweeper)
    for what in ("sampler", "pruner"):
        _check_target(sweeper.get(what), what)


# hydra.sweeper keys with a lower bound: key -> (smallest allowed value, null allowed)
SWEEPER_BOUNDS = {
    "n_trials": (1, False), "n_jobs": (1, False), "n_workers": (1, False), "max_failures": (0, True),
    "max_retry": (0, False), "heartbeat_interval": (1, True), "grace_period": (1, True),
    "warm_start_k": (1, False),
}  # fmt: skip
AUTO_KEYS = ("max_failures", "n_workers")  # keys that also take `auto`


def check_sweeper(sweeper: DictConfig) -> None:
    """The sweeper's own settings (optimlab's or hydra-optuna-sweeper's keys, where present)."""
    for key, (low, nullable) in SWEEPER_BOUNDS.items():
        if key not in sweeper:
            continue
        value = sweeper.get(key)
        if (value is None and nullable) or (key in AUTO_KEYS and value == "auto"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            allowed = f"an integer >= {low}" + (" or null" if nullable else "") + (", or auto" if key in AUTO_KEYS else "")
            raise SweepConfigError(f"hydra.sweeper.{key}={value}: must be {allowed}")
    if "pack" in sweeper:
        check_pack(sweeper.get("pack"))
    rate = sweeper.get("max_failure_rate")
    if rate is not None and not (isinstance(rate, (int, float)) and 0 <= rate <= 1):
        raise SweepConfigError(f"hydra.sweeper.max_failure_rate={rate}: must be a number in [0, 1]")
    patience = sweeper.get("storage_patience", 0)
    if isinstance(patience, bool) or not isinstance(patience, (int, float)) or not 0 <= patience < math.inf:
        raise SweepConfigError(
            f"hydra.sweeper.storage_patience={patience}: must be a number of seconds >= 0 (how long a storage "
            f"outage is waited out; 0: stop at the first failed call)"
        )
    direction = sweeper.get("direction")
    if direction is not None:
        items = list(direction) if isinstance(direction, ListConfig) else [direction]
        for d in items:
            name = str(getattr(d, "name", d)).lower()
            if name not in DIRECTIONS:
                raise SweepConfigError(
                    f"hydra.sweeper.direction={d}: must be minimize or maximize (or a list of them, one per "
                    f"objective){_did_you_mean(name, DIRECTIONS)}"
                )


PACK_AUTO = "auto"


def check_pack(value: Any) -> None:
    """``hydra.sweeper.pack``: how many trials one worker trains at once (1, 2, …) or ``auto``."""
    if value == PACK_AUTO or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return
    raise SweepConfigError(f"hydra.sweeper.pack={value}: must be an integer >= 1 (trials trained at once) or auto")


def validate_base(job: DictConfig, swept: set[str], *, models: bool = True) -> None:
    """The config every trial starts from; a problem in a swept key is left to the search-space check."""
    try:
        validate(job, models=models)
    except ConfigError as e:
        if not any(str(e).startswith(f"{k}=") for k in swept):
            raise
