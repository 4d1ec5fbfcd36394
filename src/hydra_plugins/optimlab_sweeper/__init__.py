"""optimlab's Hydra sweeper plugin (``hydra/sweeper=optimlab``); the logic lives in optimlab.sweeping."""
