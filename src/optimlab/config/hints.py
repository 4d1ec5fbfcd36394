""""Did you mean ...?" for misspelled keys, group options and search-space entries."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from optimlab.config import overrides as ovr


def closest(word: str, candidates) -> str | None:
    """The candidate that ``word`` most likely misspells, if any is close enough."""
    import difflib

    found = difflib.get_close_matches(word, [str(c) for c in candidates], n=1, cutoff=0.6)
    return found[0] if found else None


def home_hints(args: list[str]) -> list[str]:
    """A value starting with ``~`` (``data.root=~/pets``): Hydra's override lexer rejects it
    and the shell does not expand it there (``data.root`` is no shell variable name)."""
    lines = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and not arg.startswith("-") and value.lstrip("'\"").startswith("~"):
            rest = value.lstrip("'\"")[1:].rstrip("'\"")
            lines.append(f"hint: Hydra does not expand ~ in {arg}: write {key}=$HOME{rest} (unquoted: the shell "
                         f"expands $HOME) or an absolute path")  # fmt: skip
    return lines


def suggest_overrides(args: list[str], config_dir: str, config_name: str = "config") -> list[str]:
    """"did you mean ..." lines for command-line overrides that name an unknown group option,
    group or key, judged against the config as Hydra composes it. Runs after Hydra has
    rejected the command line, so it never slows a good one."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.types import ChoiceSweep

    # Hydra's flags (--cfg job, -m, ...) are no overrides; unparsable ones Hydra reports itself
    overrides = ovr.parse(a for a in args if not a.startswith("-") and "=" in a)
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


# group options that come from an optional Hydra plugin: group -> option -> (its module, what installs it)
PLUGIN_OPTIONS = {
    "hydra/launcher": {
        "ray": ("hydra_plugins.hydra_ray_launcher", "optimlab[ray]"),
        "ray_aws": ("hydra_plugins.hydra_ray_launcher", "optimlab[ray]"),
    },
}


def missing_plugin(args: list[str]) -> str | None:
    """A command-line choice of a plugin's option (``hydra/launcher=ray``) whose plugin is not
    installed: the line saying what to install (Hydra would list the group's other options)."""
    import importlib.util

    for arg in args:
        key, eq, value = arg.partition("=")
        plugin = PLUGIN_OPTIONS.get(key.strip().lstrip("+~"), {}).get(value.strip().strip("'\"")) if eq else None
        if plugin is None:
            continue
        module, extra = plugin
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return (f"{arg} needs the Hydra plugin {module.split('.')[-1].replace('_', '-')}, which is not installed: "
                    f"pip install '{extra}' (in a clone: uv sync --extra {extra[extra.index('[') + 1:-1]})")  # fmt: skip
    return None
