"""What "better" means for a run's objective: one definition for the runner's best epoch,
the report's ranking, TensorBoard's best-so-far and the sweep summary."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
DIRECTIONS = ("maximize", "minimize")


def is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def better(a: float, b: float | None, direction: str) -> bool:
    """Whether ``a`` beats ``b`` (None: nothing to beat) under ``direction``."""
    return b is None or (a > b if direction == "maximize" else a < b)


def best(items: Iterable[T], value: Callable[[T], Any], direction: str) -> T | None:
    """The item with the best finite value (the first of equals); None if none is finite."""
    found: T | None = None
    found_value = None
    for item in items:
        v = value(item)
        if is_finite(v) and better(v, found_value, direction):
            found, found_value = item, v
    return found


def rank_key(value: Any, direction: str) -> float:
    """Sort key that puts the best value first and non-finite values last."""
    if not is_finite(value):
        return math.inf
    return -value if direction == "maximize" else value
