"""The config checks: every key's type and range, and the rules between keys.

:func:`validate` walks the schema in :mod:`optimlab.config.schema`, then checks what
depends on several keys (image size vs. model, batch size vs. training split, scheduler
vs. its interval, ...). The first problem raises a :class:`~optimlab.errors.ConfigError`
whose one-line message names the key, the value and what is allowed. Type and range
mistakes are found before torch is imported; only the model check (does the model take
these images?) imports it, and asks the model itself, on torch's meta device.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from optimlab import objective
from optimlab.config import schema
from optimlab.engine.metrics import VAL_ACC, VAL_LOSS
from optimlab.errors import ConfigError

_MISSING = object()


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return repr(value)


def _fail(key: str, value, allowed: str) -> ConfigError:
    return ConfigError(f"{key}={_show(value)} is not valid: {allowed}")


def _get(cfg: DictConfig, key: str, full_key: str) -> Any:
    """``cfg[key]`` resolved; a broken interpolation becomes a ConfigError naming the key."""
    try:
        return cfg[key] if key in cfg else _MISSING
    except OmegaConfBaseException as e:
        raw = OmegaConf.to_container(cfg, resolve=False).get(key)
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{full_key}={raw!r} cannot be resolved: {msg}") from None


# --------------------------------------------------------------------------- types


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _type_ok(tp, value) -> tuple[bool, str]:
    """Whether ``value`` has type ``tp`` (a schema annotation); and the type in words."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        if value is None:
            return True, ""
        return _type_ok(inner, value)
    if origin is list:
        (item,) = typing.get_args(tp)
        ok_item, item_words = _type_ok(item, 0 if item is int else 0.0)
        if not isinstance(value, (list, ListConfig)):
            return False, f"a list of {item_words}s"
        return all(_type_ok(item, v)[0] for v in value), f"a list of {item_words}s"
    if tp is float:
        return _is_number(value), "number"
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), "integer"
    if tp is bool:
        return isinstance(value, bool), "true or false"
    if tp is str:
        return isinstance(value, str), "string"
    return True, ""


def _check_section(cfg: DictConfig, node_type: type, prefix: str) -> None:
    hints = typing.get_type_hints(node_type)
    for f in dataclasses.fields(node_type):
        key = f"{prefix}{f.name}"
        value = _get(cfg, f.name, key)
        if value is _MISSING:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, DictConfig):
                raise _fail(key, value, "must be a group of keys (see conf/config.yaml)")
            _check_section(value, tp, f"{key}.")
            continue
        ok, words = _type_ok(tp, value)
        allowed, predicate = f.metadata.get("rule", (None, None))
        if not ok:
            extra = f" ({allowed})" if allowed else ""
            article = "" if words.startswith(("a ", "true")) else ("an " if words[0] in "aeiou" else "a ")
            raise _fail(key, value, f"must be {article}{words}{extra}")
        if value is None or predicate is None:
            continue
        plain = OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value
        if not predicate(plain):
            raise _fail(key, value, f"must be {allowed}")


# --------------------------------------------------------------------------- cross-key checks


def _class_name(node) -> str:
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return str(target).rsplit(".", 1)[-1] if target else ""


def _dataset_facts(data: DictConfig):
    """The :class:`~optimlab.engine.data.Facts` on the loader ``data._target_`` names (imports it)."""
    from optimlab.engine.data import Facts, loader_of
    from optimlab.errors import DataError

    if OmegaConf.is_missing(data, "_target_") or data.get("_target_") is None:
        raise ConfigError(f"data._target_ is missing: data={data.get('name')} needs data._target_=<module.function> naming its loader")
    try:
        loader = loader_of(data.get("_target_"))
    except DataError as e:
        raise ConfigError(str(e)) from None
    return getattr(loader, "facts", None) or Facts()


def _check_data(cfg: DictConfig) -> None:
    data = cfg.data
    name = data.name
    facts = _dataset_facts(data)
    shape = f"{facts.channels}×{facts.image_size}×{facts.image_size}" if facts.channels and facts.image_size else None
    for key in ("channels", "image_size"):
        fixed = getattr(facts, key)
        if fixed is not None and data[key] != fixed:
            raise _fail(f"data.{key}", data[key], f"data={name} has {key}={fixed}" + (f" (its images are {shape})" if shape else ""))
    if facts.num_classes is not None and data.num_classes < facts.num_classes:
        raise _fail("data.num_classes", data.num_classes, f"must be >= {facts.num_classes} for data={name}")
    for key in ("mean", "std"):
        stats = data.get(key)
        if stats is not None and len(stats) != data.channels:
            raise _fail(f"data.{key}", stats, f"must have one value per channel (data.channels={data.channels}) or be null")
    if data.get("std") is not None and not all(s > 0 for s in data.std):
        raise _fail("data.std", data.std, "every value must be > 0")
    pad = data.augment.crop_padding
    if pad >= data.image_size:
        raise _fail("data.augment.crop_padding", pad, f"must be < data.image_size ({data.image_size})")


def training_split_size(cfg: DictConfig) -> int | None:
    """The training split's size, known from the config and the loader's facts without
    loading anything (None: unknown until it loads)."""
    data = cfg.data
    facts = _dataset_facts(data)
    n = facts.training_size(data)
    if n is not None and n < 1:
        held = facts.held_out
        keys = " + ".join(f"data.{k}" for k in held)
        last = held[-1]
        raise _fail(
            f"data.{last}", data.get(last),
            f"{keys} must be < {facts.train_pool} (data={data.name} has {facts.train_pool} training images)"
            if len(held) > 1 else f"must be < {facts.train_pool} (data={data.name}'s training images)",
        )  # fmt: skip
    limit = data.get("limit")
    return min(n, limit) if n is not None and limit else n


def check_training_size(cfg: DictConfig, n_train: int) -> None:
    """The rules that need the training split's size: the batch size, OneCycle's warm-up.

    :func:`validate` applies them when the config tells the size; a run whose dataset
    must be loaded first applies them right after loading (before any training)."""
    if cfg.batch_size > n_train:
        raise _fail("batch_size", cfg.batch_size, f"must be <= the training split's size ({n_train} images for data={cfg.data.name})")
    sch = cfg.scheduler
    if _class_name(sch) == "OneCycleLR":
        steps = sch.get("steps_per_epoch") or math.ceil(n_train / cfg.batch_size)
        pct = sch.get("pct_start", 0.3)
        if pct * sch.epochs * steps < 2:  # torch divides by zero on shorter warm-ups
            raise ConfigError(
                f"scheduler=onecycle needs a warm-up of at least 2 steps, but pct_start={pct} of "
                f"{sch.epochs * steps} steps (epochs x steps_per_epoch) is less: train longer, use a "
                f"smaller batch_size or a larger scheduler.pct_start"
            )


# _model_fits' answers in this process: the trials of a sweep in one worker ask about one model
_FITS: dict[tuple[str, int, int], str | None] = {}


def _model_fits(model_cfg: DictConfig, channels: int, size: int) -> str | None:
    """Why the model cannot take ``channels``×``size``×``size`` images (None: it can).

    Asks the model itself: it is built and run on torch's meta device (shapes only, no
    memory, no arithmetic), so any model, the user's own included, is judged by its layers.
    The answer is kept for the same model config and image shape.
    """
    key = (OmegaConf.to_yaml(model_cfg, resolve=True), channels, size)
    if key not in _FITS:
        _FITS[key] = _ask_model(model_cfg, channels, size)
    return _FITS[key]


def _ask_model(model_cfg: DictConfig, channels: int, size: int) -> str | None:
    import torch
    from hydra.utils import instantiate

    shape = {k: v for k, v in (("in_channels", channels), ("image_size", size)) if k in model_cfg}
    with torch.device("meta"):
        try:
            model = instantiate(OmegaConf.merge(model_cfg, shape))
            model(torch.empty(2, channels, size, size))  # 2: BatchNorm needs more than one value
        except NotImplementedError:  # an op without a meta kernel: cannot tell, let training tell
            return None
        except (RuntimeError, ValueError, IndexError, ZeroDivisionError) as e:
            return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


def _check_model(cfg: DictConfig) -> None:
    model, data = cfg.model, cfg.data
    try:
        why = _model_fits(model, data.channels, data.image_size)
    except ImportError as e:
        raise _fail("model._target_", model.get("_target_"), f"must be an importable model class ({e})") from None
    except Exception as e:  # noqa: BLE001 - a model that cannot be built is the user's to fix
        raise _fail("model._target_", model.get("_target_"), f"could not be built: {type(e).__name__}: {e}") from None
    if why is None:
        return
    cls = _class_name(model)
    fits = [s for s in range(1, 257) if _model_fits(model, data.channels, s) is None]
    smallest = fits[0] if fits else None
    if smallest is not None and smallest > data.image_size:
        raise _fail("data.image_size", data.image_size, f"must be >= {smallest} for model {cls}")
    raise _fail("data.image_size", data.image_size, f"model {cls} cannot take {data.channels}×{data.image_size}×{data.image_size} images ({why})")


def _check_optimizer(cfg: DictConfig) -> None:
    opt = cfg.optimizer
    if opt.get("nesterov") and (opt.get("momentum", 0) <= 0 or opt.get("dampening", 0) != 0):
        raise _fail("momentum", opt.get("momentum"), "optimizer=nesterov needs momentum > 0 (and dampening 0)")


def _check_scheduler(cfg: DictConfig) -> None:
    sch = cfg.scheduler
    cls = _class_name(sch)
    interval = sch.get("interval")
    if cls == "ReduceLROnPlateau":
        if interval != "metric":
            raise _fail("scheduler.interval", interval, "must be 'metric' for ReduceLROnPlateau (it steps on a validation metric)")
        factor = sch.get("factor")
        if factor is not None and not 0 < factor < 1:
            raise _fail("scheduler.factor", factor, "must be in (0, 1)")
        monitor, mode = sch.get("monitor", VAL_LOSS), sch.get("mode", "min")
        wanted = "max" if monitor == VAL_ACC else "min"
        if mode != wanted:
            raise _fail("scheduler.mode", mode, f"must be '{wanted}' when scheduler.monitor={monitor!r}")
    elif interval == "metric":
        raise _fail("scheduler.interval", interval, f"'metric' is only for scheduler=plateau; {cls} takes epoch or batch")
    if cls == "ConstantLR":
        factor = sch.get("factor")
        if factor is not None and not 0 < factor <= 1:
            raise _fail("scheduler.factor", factor, "must be in (0, 1]")
    if cls == "OneCycleLR" and interval != "batch":
        raise _fail("scheduler.interval", interval, "must be 'batch' for OneCycleLR (it is stepped every batch)")
    if cls == "OneCycleLR" and sch.get("epochs", cfg.epochs) < cfg.epochs:
        raise _fail("scheduler.epochs", sch.get("epochs"), f"must be >= epochs ({cfg.epochs}): OneCycleLR cannot step past its cycle")


def _check_loggers(cfg: DictConfig) -> None:
    """Each ``logger`` entry names its class, and the keys of the built-in trackers have
    values they accept (a tracker's own failures at run time are warnings, not errors)."""
    loggers = cfg.get("logger")
    if loggers is None:
        return
    if not isinstance(loggers, DictConfig):
        raise _fail("logger", loggers, "must be a logger group option: logger=tensorboard, logger=[tensorboard,mlflow], logger=none")
    for name, node in loggers.items():
        if not isinstance(node, DictConfig) or not node.get("_target_"):
            raise _fail(f"logger.{name}", node, f"must be a group of keys with logger.{name}._target_=<module.Class>")
        for key, (allowed, ok) in schema.LOGGER_RULES.get(_class_name(node), {}).items():
            if key in node and node[key] is not None and not ok(node[key]):
                raise _fail(f"logger.{name}.{key}", node[key], f"must be {allowed}")


def _check_objective(cfg: DictConfig) -> None:
    obj = cfg.objective
    if obj.get("metrics") is None:
        if obj.get("directions") is not None:
            raise _fail("objective.directions", obj.directions, "needs objective.metrics (one direction per metric)")
        metric, direction = obj.metric, obj.direction
        wanted = objective.METRICS[metric]
        if direction != wanted:
            raise _fail("objective.direction", direction, f"must be {wanted!r} for objective.metric={metric!r}")
        return
    metrics, directions = objective.targets(obj)
    wanted = [objective.METRICS[m] for m in metrics]
    if directions != wanted:
        raise _fail("objective.directions", obj.directions, f"must be null or {wanted} for objective.metrics={metrics}")


def validate(cfg: DictConfig, *, models: bool = True) -> None:
    """Raise ConfigError naming the key, the value and what is allowed; return quietly if fine.

    ``models=False`` leaves out the one check that imports torch (does the model take these
    images?): a sweep checks everything else of every trial first."""
    _check_section(cfg, schema.ConfigSchema, "")
    try:
        _check_objective(cfg)
        _check_loggers(cfg)
        if "optimizer" in cfg:
            _check_optimizer(cfg)
        if "scheduler" in cfg:
            _check_scheduler(cfg)
        if "data" in cfg:
            _check_data(cfg)
            n_train = training_split_size(cfg)
            if n_train is not None and "scheduler" in cfg:
                check_training_size(cfg, n_train)
            if "model" in cfg and models:
                _check_model(cfg)
    except OmegaConfBaseException as e:  # a key a check needs is missing or unresolvable
        raise ConfigError(f"invalid config: {str(e).splitlines()[0]}") from None
