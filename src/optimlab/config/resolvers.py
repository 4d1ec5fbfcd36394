"""optimlab's OmegaConf resolvers, registered explicitly by the entry points (cli, rerun)."""

from __future__ import annotations

import secrets

from omegaconf import OmegaConf


def register() -> None:
    """Make ``${optimlab.uid:}`` available (idempotent)."""
    # Like Hydra's `now`, cached per config: a run folder's name is fixed once chosen,
    # and two runs started in the same second get different ones.
    if not OmegaConf.has_resolver("optimlab.uid"):
        OmegaConf.register_new_resolver("optimlab.uid", lambda: secrets.token_hex(3), use_cache=True)
