"""optimlab: Hydra-configured PyTorch training and Optuna hyperparameter sweeps."""

__version__ = "0.1.0"
