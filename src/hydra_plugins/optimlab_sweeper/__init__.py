"""optimlab's Hydra sweeper plugin (``hydra/sweeper=optimlab``); the logic lives in optimlab.sweeping.

Hydra imports this package in every app when it looks for plugins (in the sweep's process and
in a launcher's workers), so ``${optimlab.trial:}`` resolves in any app's config."""

from optimlab.sweeping.pruning import register_resolver

register_resolver()
