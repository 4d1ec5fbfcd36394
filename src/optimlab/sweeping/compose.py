"""A sweep's jobs composed once per shape: Hydra's ``load_sweep_config`` re-reads and
re-merges every config file for every job (about 0.6 s a trial on a 2-core CPU, as long as
a pruned trial trains). The trials of a search differ in the *values* of a few keys (lr,
momentum, the job's sub-folder and environment), never in which files make up the config,
so the first job of a shape is composed by Hydra and the others are copies of it with
their values set through Hydra's own override application.

What may differ between two jobs served from one composition: plain ``key=value`` (and
``++hydra.job.env_set.K=V``) overrides of keys that hold a leaf value in the composed
config. Any other difference (a config group, ``+``/``~``, a list or dict value, a key
that is not there) composes afresh. Interpolations in the defaults list can name only
config group choices (Hydra 1.1+), so values cannot change which files are composed.
"""

from __future__ import annotations

import copy
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

ENV_SET = "hydra.job.env_set."


class ComposeCache:
    """``load_sweep_config`` of ``loader`` for a sweep's jobs, one composition per shape;
    everything else is the loader's."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.templates: dict[tuple, tuple[DictConfig, dict[str, str]]] = {}  # shape -> (config, group choices)

    def __getattr__(self, name: str) -> Any:
        if name in ("loader", "templates"):  # not set yet (unpickling in a launcher's process)
            raise AttributeError(name)
        return getattr(self.loader, name)

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        lines = [*OmegaConf.to_container(master_config.hydra.overrides.hydra), *sweep_overrides]
        parsed = OverridesParser.create().parse_overrides(lines)
        candidates = [o for o in parsed if _is_value(o)]  # `key=value`: a value, or a group's choice
        shape = (tuple(o.input_line for o in parsed if not _is_value(o)), tuple(o.key_or_group for o in candidates))
        found = self.templates.get(shape)
        # a group's choice (optimizer=adam) must be the template's; only leaf values may differ
        if found is None or any(found[1].get(o.key_or_group, o.input_line) != o.input_line for o in candidates):
            config = self.loader.load_sweep_config(master_config, list(sweep_overrides))
            fixed = {o.key_or_group: o.input_line for o in candidates if not _is_leaf(config, o.key_or_group)}
            self.templates[shape] = (copy.deepcopy(config), fixed)
            return config
        template, fixed = found
        config = copy.deepcopy(template)
        ConfigLoaderImpl._apply_overrides_to_config([o for o in candidates if o.key_or_group not in fixed], config)
        with open_dict(config.hydra):  # as Hydra records them (load_configuration)
            config.hydra.overrides.hydra = [o.input_line for o in parsed if o.is_hydra_override()]
            config.hydra.overrides.task = [o.input_line for o in parsed if not o.is_hydra_override()]
            names = config.hydra.job.config.override_dirname
            config.hydra.job.override_dirname = get_overrides_dirname(
                overrides=[o for o in parsed if not o.is_hydra_override()],
                kv_sep=names.kv_sep, item_sep=names.item_sep, exclude_keys=names.exclude_keys,
            )  # fmt: skip
        OmegaConf.copy_cache(from_config=master_config, to_config=config)
        return config


def _is_value(o: Override) -> bool:
    """A plain value override (``key=1e-3``, ``++hydra.job.env_set.K=V``): it changes a value,
    never the files composed."""
    if o.package is not None or o.is_sweep_override() or not isinstance(o.value(), (str, int, float, bool)):
        return False
    if o.type == OverrideType.CHANGE:
        return True
    return o.type == OverrideType.FORCE_ADD and o.key_or_group.startswith(ENV_SET)


def _is_leaf(config: DictConfig, key: str) -> bool:
    """Whether ``key`` is there in ``config`` and holds a leaf value (not a group's node, a
    list or a dict); looked at without resolving interpolations."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(config, parent_key, throw_on_resolution_failure=False) if parent_key else config
    return isinstance(parent, DictConfig) and leaf in parent and not isinstance(parent._get_node(leaf), (DictConfig, ListConfig))
