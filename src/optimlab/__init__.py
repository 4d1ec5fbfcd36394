"""optimlab: Hydra-configured PyTorch training and Optuna hyperparameter sweeps."""

__version__ = "0.1.0"


def load(run_dir, weights=None, device="cpu", convert=False):
    """A trained run's model and how to prepare its inputs: ``.model`` (eval mode),
    ``.transform`` (image -> normalised tensor), ``.classes``, ``.weights``, ``.epoch``;
    see :func:`optimlab.use.load` (imported when called: ``import optimlab`` stays light)."""
    from optimlab.use import load as load_run

    return load_run(run_dir, weights=weights, device=device, convert=convert)
