"""``python train.py [overrides]``: one training run; ``-m`` for a sweep."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from optimlab.config import suggest_overrides, validate  # also registers the configs' resolvers
from optimlab.errors import OptimlabError
from optimlab.sweeping.pruning import trial_callbacks

log = logging.getLogger("optimlab")

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    try:
        if not cfg.get("resume"):  # a resumed run is checked once its saved config is loaded
            validate(cfg)  # bad input fails here, before torch is even imported (seconds)
        from optimlab.runner import run

        return run(cfg, hc.runtime.output_dir, overrides=list(hc.overrides.task), callbacks=trial_callbacks(cfg))
    except OptimlabError as e:
        if hc.mode == RunMode.MULTIRUN:
            raise  # the sweeper records the failure and goes on
        log.error("%s", e)  # one clear line, no traceback wall
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        if hc.mode == RunMode.MULTIRUN:
            raise  # Ctrl-C stops the whole sweep
        # the runner has already saved the state and written summary.json (status: interrupted)
        log.error("interrupted (Ctrl-C): state saved in %s (summary.json status: interrupted)", hc.runtime.output_dir)
        sys.exit(130)


def main() -> None:
    """``python train.py``: Hydra's main, plus a "did you mean" when Hydra rejects an override.

    Hydra reports a bad command line (unknown group option, unknown key) itself, from
    ``run_and_report``, and exits 1 without handing the exception to anyone. Rather than
    patch Hydra's private internals, we let it print its message and exit, then check the
    overrides (still in ``sys.argv``) against the config and add the closest match. This
    uses only Hydra's public compose/parser API and costs nothing when the command is fine.
    """
    try:
        hydra_main()
    except SystemExit as e:
        if e.code == 1:  # Hydra's own error exit (optimlab's errors exit 2, Ctrl-C 130)
            try:
                hints = suggest_overrides(sys.argv[1:], CONFIG_DIR)
            except Exception:  # a hint must never hide Hydra's message
                hints = []
            for line in hints:
                sys.stderr.write(line + "\n")
        raise


if __name__ == "__main__":
    main()
