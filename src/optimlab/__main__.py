"""``python -m optimlab [overrides]``: the same as ``python train.py`` and ``optimlab-train``."""

from optimlab.cli import main

main()
