"""Command-line overrides read with Hydra's own parser (never split by hand)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override


def parse(lines: Iterable[str]) -> list[Override]:
    """Hydra's parse of each override; a line Hydra cannot parse is skipped."""
    parser = OverridesParser.create()
    found = []
    for line in lines:
        try:
            found.extend(parser.parse_overrides([str(line)]))
        except Exception:  # noqa: BLE001 - Hydra itself reports unparsable lines
            continue
    return found


def key_of(line: str) -> str:
    """``+a.b=1`` → ``a.b``; ``optimizer=adam`` → ``optimizer``; a bad line → its text before ``=``."""
    parsed = parse([line])
    return parsed[0].key_or_group if parsed else str(line).split("=", 1)[0].lstrip("+~")


def is_hydra(key: str) -> bool:
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def job_values(lines: Iterable[str]) -> dict[str, str]:
    """``{key: value as typed}`` of the overrides that set a job key (not Hydra's, not deletions)."""
    return {
        o.key_or_group: o.get_value_element_as_str()
        for o in parse(lines)
        if not is_hydra(o.key_or_group) and not o.is_delete()
    }


def without_keys(lines: Iterable[str], keys: Iterable[str]) -> list[str]:
    """The override lines whose key is not in ``keys``."""
    drop = set(keys)
    return [line for line in lines if key_of(line) not in drop]


def quote(value: Any) -> str:
    """A Hydra override value that stays a string whatever characters it holds."""
    # Hydra's quoted strings: backslashes escape only a quote or the closing quote after them
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", str(value))
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return "'" + text + "'"


def program() -> list[str]:
    """The command this process was started as, to print a command that runs again the same
    way: ``python app.py`` (as typed, e.g. ``python src/train.py``), ``python -m optimlab``,
    an ``optimlab-train`` console script; ``python train.py`` otherwise (a test runner)."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "train.py"
    path = Path(argv0)
    package = Path(__file__).resolve().parents[1]
    if path.suffix == ".py" and path.resolve().parent == package:
        return ["python", "-m", "optimlab"] if path.name == "__main__.py" else ["python", "train.py"]
    if path.suffix == ".py":
        return ["python", argv0]
    return [path.name] if path.name.startswith("optimlab-") else ["python", "train.py"]
