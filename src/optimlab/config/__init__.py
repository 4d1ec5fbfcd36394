"""optimlab's config: the schema, the checks (single runs and sweeps), "did you mean"
hints, override parsing and the resolvers. Nothing here imports torch at import time."""

from functools import cache
from pathlib import Path

from omegaconf import OmegaConf

from optimlab.config.checks import validate

# The primary config that `python train.py` composes: the project's top-level conf/, which
# the wheel ships as optimlab/conf (an installed optimlab reads that copy).
_PACKAGED = Path(__file__).resolve().parents[1] / "conf"
CONFIG_DIR = str(_PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[3] / "conf")
CONFIG_NAME = "config"


@cache
def defaults() -> dict:
    """conf/config.yaml's own values (their one home), as written there."""
    return OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / f"{CONFIG_NAME}.yaml"))


def default_objective() -> dict:
    """conf/config.yaml's ``objective``: for folders that do not say theirs."""
    return defaults()["objective"]


__all__ = ["CONFIG_DIR", "CONFIG_NAME", "default_objective", "defaults", "validate"]
