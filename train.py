"""Train a model: ``python train.py [group=option] [key=value]...``; ``-m`` to sweep."""

from optimlab.cli import main

if __name__ == "__main__":
    main()
