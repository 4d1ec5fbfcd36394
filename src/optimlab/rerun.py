"""``python -m optimlab.rerun <run folder> [key=value ...]``: see :mod:`optimlab.run.rerun`."""

import sys

from optimlab.cli import train
from optimlab.run.rerun import main

if __name__ == "__main__":
    sys.exit(main(train))
