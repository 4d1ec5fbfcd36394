"""``python train.py [overrides]``: one training run; ``-m`` for a sweep."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import optimlab.config  # noqa: F401  (registers the resolvers the configs use)
from optimlab.errors import OptimlabError
from optimlab.runner import run
from optimlab.sweeping.pruning import trial_callbacks

log = logging.getLogger("optimlab")

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    try:
        return run(cfg, hc.runtime.output_dir, overrides=list(hc.overrides.task), callbacks=trial_callbacks(cfg))
    except OptimlabError as e:
        if hc.mode == RunMode.MULTIRUN:
            raise  # the sweeper records the failure and goes on
        log.error("%s", e)  # one clear line, no traceback wall
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
