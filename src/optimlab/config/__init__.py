"""optimlab's config: the schema, the checks (single runs and sweeps), "did you mean"
hints, override parsing and the resolvers. Nothing here imports torch at import time."""

from pathlib import Path

from optimlab.config.checks import validate

# The primary config that `python train.py` composes: the project's top-level conf/, which
# the wheel ships as optimlab/conf (an installed optimlab reads that copy).
_PACKAGED = Path(__file__).resolve().parents[1] / "conf"
CONFIG_DIR = str(_PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[3] / "conf")
CONFIG_NAME = "config"

__all__ = ["CONFIG_DIR", "CONFIG_NAME", "validate"]
