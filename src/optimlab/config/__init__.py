"""optimlab's config: the schema, the checks (single runs and sweeps), "did you mean"
hints, override parsing and the resolvers. Nothing here imports torch at import time."""

from optimlab.config.checks import validate

__all__ = ["validate"]
