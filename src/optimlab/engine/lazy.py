"""A module imported on first use of one of its names.

The dataset modules name torch everywhere, but the config checks only read a loader's
facts (``@facts``) from them: with ``torch = Lazy("torch")`` a check of a dataset entry
imports the loader's module without torch (about 3 s of a refused command), and the first
tensor op imports it."""

from __future__ import annotations

import importlib
import types
from typing import Any


class Lazy(types.ModuleType):
    """Stands for the module ``name`` until one of its names is read; then imports it."""

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__name__)
        self.__dict__.update(vars(module))  # later reads are plain attribute reads
        return getattr(module, attr)
