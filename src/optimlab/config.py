"""Config checks that run before any training, and optimlab's OmegaConf resolvers.

:func:`validate` walks the schema in :mod:`optimlab.schema` (types and ranges of every
key), then checks what depends on several keys (image size vs. model, batch size vs.
training split, scheduler vs. its interval, ...). The first problem raises a
:class:`~optimlab.errors.ConfigError` whose one-line message names the key, the value
and what is allowed. No torch here: this runs before anything heavy is imported.
"""

from __future__ import annotations

import dataclasses
import secrets
import typing
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from optimlab import schema
from optimlab.errors import ConfigError
from optimlab.schema import DIRECTIONS, INTERVALS, OBJECTIVE_METRICS, PRECISIONS  # noqa: F401  (re-exported)


def register_resolvers() -> None:
    # Like Hydra's `now`, cached per config: a run folder's name is fixed once chosen.
    if not OmegaConf.has_resolver("optimlab.uid"):
        OmegaConf.register_new_resolver("optimlab.uid", lambda: secrets.token_hex(3), use_cache=True)


register_resolvers()

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


def _check_data(cfg: DictConfig) -> None:
    data = cfg.data
    name = data.name
    facts = schema.DATASET_FACTS.get(name, {})
    for key in ("channels", "image_size"):
        if key in facts and data[key] != facts[key]:
            raise _fail(f"data.{key}", data[key], f"data={name} has {key}={facts[key]} (its images are 3×32×32)")
    if "classes" in facts and data.num_classes < facts["classes"]:
        raise _fail("data.num_classes", data.num_classes, f"must be >= {facts['classes']} for data={name}")
    for key in ("mean", "std"):
        stats = data.get(key)
        if stats is not None and len(stats) != data.channels:
            raise _fail(f"data.{key}", stats, f"must have one value per channel (data.channels={data.channels}) or be null")
    if data.get("std") is not None and not all(s > 0 for s in data.std):
        raise _fail("data.std", data.std, "every value must be > 0")
    pad = data.augment.crop_padding
    if pad >= data.image_size:
        raise _fail("data.augment.crop_padding", pad, f"must be < data.image_size ({data.image_size})")

    model = cfg.get("model")
    cls = _class_name(model)
    if cls in schema.MODEL_MIN_IMAGE_SIZE:
        smallest = schema.MODEL_MIN_IMAGE_SIZE[cls](model)
        if data.image_size < smallest:
            raise _fail("data.image_size", data.image_size, f"must be >= {smallest} for model {cls}")

    # The training split's size, known without loading anything.
    if name == "synthetic":
        n_train = data.get("train_size")
    elif name == "digits":
        held = data.test_size + data.val_size
        if held >= facts["pool"]:
            raise _fail(
                "data.val_size", data.val_size,
                f"data.test_size + data.val_size must be < {facts['pool']} (digits has {facts['pool']} images)",
            )  # fmt: skip
        n_train = facts["pool"] - held
    elif name == "cifar10":
        if data.val_size >= facts["train_pool"]:
            raise _fail("data.val_size", data.val_size, f"must be < {facts['train_pool']} (CIFAR-10's training images)")
        n_train = facts["train_pool"] - data.val_size
    else:
        n_train = None
    if n_train is not None and cfg.batch_size > n_train:
        raise _fail("batch_size", cfg.batch_size, f"must be <= the training split's size ({n_train} images for data={name})")


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
        monitor, mode = sch.get("monitor", "val_loss"), sch.get("mode", "min")
        wanted = "max" if monitor == "val_acc" else "min"
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


def _check_objective(cfg: DictConfig) -> None:
    metric, direction = cfg.objective.metric, cfg.objective.direction
    wanted = "maximize" if metric == "val_acc" else "minimize"
    if direction != wanted:
        raise _fail("objective.direction", direction, f"must be {wanted!r} for objective.metric={metric!r}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the key, the value and what is allowed; return quietly if fine."""
    _check_section(cfg, schema.ConfigSchema, "")
    try:
        _check_objective(cfg)
        if "data" in cfg:
            _check_data(cfg)
        if "optimizer" in cfg:
            _check_optimizer(cfg)
        if "scheduler" in cfg:
            _check_scheduler(cfg)
    except OmegaConfBaseException as e:  # a key a check needs is missing or unresolvable
        raise ConfigError(f"invalid config: {str(e).splitlines()[0]}") from None



# --------------------------------------------------------------------------- "did you mean"


def closest(word: str, candidates) -> str | None:
    """The candidate that ``word`` most likely misspells, if any is close enough."""
    import difflib

    found = difflib.get_close_matches(word, [str(c) for c in candidates], n=1, cutoff=0.6)
    return found[0] if found else None


def suggest_overrides(args: list[str], config_dir: str, config_name: str = "config") -> list[str]:
    """"did you mean ..." lines for command-line overrides that name an unknown group option,
    group or key, judged against the config as Hydra composes it. Runs after Hydra has
    rejected the command line, so it never slows a good one."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    parser = OverridesParser.create()
    overrides = []
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue  # Hydra's flags (--cfg job, -m, ...)
        try:
            overrides.extend(parser.parse_overrides([arg]))
        except Exception:
            continue  # unparsable: Hydra's own message says where
    if not overrides:
        return []

    GlobalHydra.instance().clear()
    lines: list[str] = []
    with initialize_config_dir(version_base="1.3", config_dir=config_dir):
        loader = GlobalHydra.instance().config_loader()

        def groups_under(parent: str) -> list[str]:
            return list(loader.list_groups(parent))

        def is_group(name: str) -> bool:
            parent, _, leaf = name.rpartition("/")
            return leaf in groups_under(parent)

        good_choices = []
        keys = []
        for o in overrides:
            name = o.key_or_group
            if o.is_delete() or o.is_add() or o.is_force_add():
                continue
            if is_group(name):
                options = loader.get_group_options(name)
                value = o.value()
                values = value.list if isinstance(value, ChoiceSweep) else [value]
                bad = [v for v in values if isinstance(v, str) and v not in options]
                for v in bad:
                    match = closest(v, options)
                    if match:
                        lines.append(f"did you mean {name}={match}?")
                if not bad and not isinstance(value, ChoiceSweep):
                    good_choices.append(o.input_line)
            elif "/" in name:
                parent, _, leaf = name.rpartition("/")
                match = closest(leaf, groups_under(parent))
                if match:
                    lines.append(f"did you mean {parent + '/' if parent else ''}{match}=...? (a config group)")
            else:
                keys.append(o)
        if keys:
            try:
                cfg = compose(config_name, overrides=good_choices, return_hydra_config=True)
            except Exception:
                return lines
            for o in keys:
                suggestion = _suggest_key(cfg, o.key_or_group, groups_under(""))
                if suggestion:
                    lines.append(f"did you mean {suggestion}={o.get_value_element_as_str()}?")
    GlobalHydra.instance().clear()
    return lines


def _suggest_key(cfg: DictConfig, key: str, top_groups: list[str]) -> str | None:
    """The closest existing dotted key to ``key``, fixing the first part that does not exist."""
    parts = key.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        if isinstance(node, DictConfig) and part in node:
            node = node._get_node(part)
            node = node if isinstance(node, DictConfig) else None
            continue
        if not isinstance(node, DictConfig):
            return None
        candidates = list(node.keys()) + (top_groups if i == 0 else [])
        match = closest(part, candidates)
        return ".".join([*parts[:i], match, *parts[i + 1 :]]) if match else None
    return None
