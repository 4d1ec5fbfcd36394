"""The layout's rules, read from the source: data flows one way and each fact has one owner.

- ``engine/`` never sees a config: no omegaconf, no hydra, nothing of optimlab's upper layers.
- Layers only import downwards (base < engine < config, observe < run < sweeping < entry points).
- Module-level imports form no cycle.
- Only ``run/folder.py`` names the run folder's files.
- Each shared fact (directions, metric names, the storage errno list, error types) has one owner.
- No class over 250 lines, no function over 60.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

SRC = ROOT / "src"
PACKAGE = SRC / "optimlab"
FOLDER_OWNER = "optimlab.run.folder"
RUN_FILES = ("summary.json", "metrics.csv", "checkpoint.pt", "best.pt", "eval.json", "log.csv", "profile_trace.json")
OWNED_CONSTANTS = ("SUMMARY_FILE", "METRICS_FILE", "CHECKPOINT_FILE", "BEST_FILE", "EVAL_FILE", "LOG_TABLE_FILE",
                   "PROFILE_TRACE_FILE")  # fmt: skip

# Lower numbers are lower layers; a module may import its own package or lower layers.
LAYERS = {
    "optimlab": 0, "optimlab.errors": 0, "optimlab.files": 0, "optimlab.objective": 0,
    "optimlab.engine.metrics": 0,  # the metric columns' declaration: plain dataclass, read by every layer
    "optimlab.engine": 1,
    "optimlab.config": 2, "optimlab.observe": 2,
    "optimlab.run": 3,
    "optimlab.sweeping": 4,
    "optimlab.cli": 5, "optimlab.report": 5, "optimlab.use": 5,
    "optimlab.rerun": 6,  # the re-run entry point runs the CLI's task
    "optimlab.__main__": 6,  # python -m optimlab: the CLI
}  # fmt: skip
# the package's public calls, re-exported by optimlab/__init__.py inside a function (imported when called)
PUBLIC_CALLS = {"optimlab": ("optimlab.use",)}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for each import in ``name``; names imported
    ``from`` a package count as that package's modules when they are modules."""
    tree = ast.parse(MODULES[name].read_text())
    found = []
    for node in ast.walk(tree):
        top = node in tree.body
        if isinstance(node, ast.Import):
            found += [(a.name, top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, top))
            found += [(f"{node.module}.{a.name}", top) for a in node.names if f"{node.module}.{a.name}" in MODULES]
    return found


def layer(name: str) -> tuple[str, int]:
    """(the layer's package, its rank) of an optimlab module."""
    key = max((k for k in LAYERS if name == k or name.startswith(k + ".")), key=len)
    return key, LAYERS[key]


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)  # raises ValueError (max of nothing) for a module outside every layer


def test_engine_never_sees_the_config():
    for name in MODULES:
        if not name.startswith("optimlab.engine"):
            continue
        for imported, _ in imports(name):
            root = imported.split(".")[0]
            assert root not in ("omegaconf", "hydra"), f"{name} imports {imported}"


def test_layers_only_import_downwards():
    for name in MODULES:
        own, rank = layer(name)
        for imported, top in imports(name):
            if not imported.startswith("optimlab") or imported not in MODULES and imported.rsplit(".", 1)[0] not in MODULES:
                continue
            if not top and any(imported == c or imported.startswith(c + ".") for c in PUBLIC_CALLS.get(name, ())):
                continue
            target = imported if imported in MODULES else imported.rsplit(".", 1)[0]
            other, other_rank = layer(target)
            ok = other == own or other_rank < rank or other_rank == 0
            assert ok, f"{name} (layer {own}) imports {target} (layer {other}): imports go down the layers only"


def test_no_import_cycles():
    graph = {
        name: {t for t, top in imports(name) if top and t in MODULES and t != name and not name.startswith(t + ".")}
        for name in MODULES
    }
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = path[path.index(name):] + [name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in MODULES:
        visit(name, [])


def test_only_the_folder_module_names_the_run_files():
    for name, path in MODULES.items():
        if name == FOLDER_OWNER:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                # a path-like literal (no spaces: prose in docstrings and messages may name them)
                path_like = not any(c.isspace() for c in node.value)
                for run_file in RUN_FILES:
                    assert not (path_like and run_file in node.value), f"{name} names {run_file}: {node.value!r}"
            if isinstance(node, ast.ImportFrom) and node.module == FOLDER_OWNER:
                taken = {a.name for a in node.names} & set(OWNED_CONSTANTS)
                assert not taken, f"{name} imports {sorted(taken)}: read and write them through RunFolder"


# facts with one owner module: (what the owner defines, the owner)
STORAGE_ERRNO_NAMES = ("ENOSPC", "EDQUOT", "EROFS", "EPERM")  # EACCES is also a lock's "held", in run/lock.py
ONE_OWNER = {
    "DIRECTIONS": "optimlab.engine.metrics", "EPOCH_METRICS": "optimlab.engine.metrics",
    "STORAGE_ERRNOS": "optimlab.errors", "STORAGE_HINTS": "optimlab.errors",
}  # fmt: skip
# metrics.csv columns that code reads by name: only engine/metrics.py spells them
NAMED_METRICS = ("train_loss", "val_loss", "val_acc")
METRICS_OWNER = "optimlab.engine.metrics"


def test_the_storage_errno_list_lives_in_errors_only():
    for name, path in MODULES.items():
        if name == "optimlab.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "errno":
                assert node.attr not in STORAGE_ERRNO_NAMES, f"{name} names errno.{node.attr}: use optimlab.errors"


def test_shared_constants_are_assigned_by_their_owner_only():
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    owner = ONE_OWNER.get(getattr(target, "id", None))
                    if owner is None or name == owner:
                        continue
                    # an alias of the owner's own value (NAME = owner.NAME) is an import, not a copy
                    alias = isinstance(node.value, ast.Attribute) and node.value.attr == target.id
                    assert alias, f"{name} defines {target.id} again: import it from {owner}"


def test_the_bench_scripts_import_what_exists():
    """bench/ imports optimlab inside its functions, so a moved module breaks a benchmark
    only when it runs: every ``from optimlab... import name`` there must resolve."""
    import importlib
    import importlib.util

    for script in sorted((ROOT / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "optimlab":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    found = hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}")
                    assert found, f"{script.name}: from {node.module} import {alias.name}"


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants in ``tree`` (prose may name a metric)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_metric_names_are_spelled_by_their_owner_only():
    """A metric read by name (``row["val_acc"]``) uses engine/metrics.py's constant, so a
    renamed column cannot leave a stale copy behind."""
    for name, path in MODULES.items():
        if name == METRICS_OWNER:
            continue
        tree = ast.parse(path.read_text())
        prose = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and id(node) not in prose:
                assert node.value not in NAMED_METRICS, (
                    f"{name}:{node.lineno} spells the metric {node.value!r}: import it from {METRICS_OWNER}"
                )


def test_error_types_live_in_errors_only():
    """Every exception class optimlab defines is in errors.py (the README's promise)."""
    from optimlab import errors

    for name, path in MODULES.items():
        if name == "optimlab.errors":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                ours = {k for k, v in vars(errors).items() if isinstance(v, type) and issubclass(v, BaseException)}
                raises = any(b.endswith(("Error", "Exception", "Interrupt")) or b in ours for b in bases)
                assert not raises, f"{name} defines the error type {node.name}: define it in optimlab/errors.py"


def test_every_logger_keeps_the_one_small_interface():
    """Each ``conf/logger`` entry is built as ``Logger(run: RunContext, **its YAML keys)``
    and has the two calls of :class:`optimlab.observe.context.Logger`."""
    import inspect

    from hydra.utils import get_method
    from omegaconf import OmegaConf

    from optimlab.observe.context import Logger

    for yaml in sorted((ROOT / "conf" / "logger").glob("*.yaml")):
        for name, node in (OmegaConf.load(yaml) or {}).items():
            cls = get_method(node["_target_"])
            params = list(inspect.signature(cls).parameters)
            assert params[0] == "run", f"{yaml.name}: {cls.__name__} must take the RunContext first, takes {params}"
            own = {k for k in node if k != "_target_"}
            assert own <= set(params[1:]), f"{yaml.name}: {cls.__name__} does not take {sorted(own - set(params))}"
            for method in ("on_epoch_end", "on_run_end"):
                theirs = list(inspect.signature(getattr(cls, method)).parameters)
                ours = list(inspect.signature(getattr(Logger, method)).parameters)
                assert len(theirs) == len(ours), f"{cls.__name__}.{method}{tuple(theirs)}: must match Logger.{method}"


MAX_CLASS_LINES, MAX_FUNCTION_LINES = 250, 60


def test_no_class_or_function_is_too_long_to_read():
    """Small units a newcomer can read whole: no class over 250 lines, no function over 60."""
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef):
                assert lines <= MAX_CLASS_LINES, f"{name}.{node.name} is {lines} lines (at most {MAX_CLASS_LINES})"
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert lines <= MAX_FUNCTION_LINES, f"{name}: {node.name}() is {lines} lines (at most {MAX_FUNCTION_LINES})"
