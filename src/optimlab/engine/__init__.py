"""The training engine: data on the device, models, the loop. Plain Python/torch
arguments only: nothing here reads a config (no omegaconf, no hydra)."""
