"""torchvision's classic datasets in their own on-disk formats, loaded once as uint8 splits.

Each loader reads the files torchvision's class of the same name reads (same folder
layout, same file names, same formats), downloads them with torchvision when they are
missing and ``download`` is true, and otherwise fails at once with one line saying where
the files go. The facts on each loader (``@facts``) let the config checks judge
``data.num_classes`` and ``batch_size`` before anything loads.

- ``mnist``, ``fashion_mnist``: ``<root>/MNIST/raw/`` (``<root>/FashionMNIST/raw/``) with the
  four idx files (``train-images-idx3-ubyte``, ...), as torchvision extracts them; resized to
  ``image_size`` and repeated to ``channels`` (1 or 3) so the CIFAR-sized nets take them.
- ``cifar100``: ``<root>/cifar-100-python/{train,test}`` (python pickles, fine labels).
- ``svhn``: ``<root>/train_32x32.mat`` and ``test_32x32.mat`` (MATLAB files; label 10 is digit 0).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from optimlab.engine.data import (
    Split, Splits, split_off, download_or_explain, facts, fit_images, held_count, load_cifar, missing_offline,
)  # fmt: skip
from optimlab.engine.lazy import Lazy
from optimlab.errors import DataError

torch = Lazy("torch")  # imported on first use: the config checks read the loaders' facts without it


@contextlib.contextmanager
def _corrupt_if_unreadable(problem: str, fix: str) -> Iterator[None]:
    """Any error while reading a dataset's files is one problem for the user: the files."""
    try:
        yield
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{problem} ({type(e).__name__}: {e}); {fix}") from e


# --------------------------------------------------------------------------- MNIST, Fashion-MNIST


def _idx_files(cls, train: bool) -> tuple[str, str]:
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def load_idx(cls, what: str, root: str, download: bool, channels: int, image_size: int, val_size: float,
             split_seed: int, classes: tuple[str, ...] | None = None) -> Splits:  # fmt: skip
    """An MNIST-format dataset through torchvision's class ``cls`` (MNIST, FashionMNIST);
    ``classes``: a name per label (None: the labels themselves)."""
    root = Path(root).expanduser()
    folder = root / cls.__name__ / "raw"
    wanted = [*_idx_files(cls, True), *_idx_files(cls, False)]
    missing = [f for f in wanted if not (folder / f).is_file()]
    if missing:
        if not download:
            raise missing_offline(what, folder, missing)
        download_or_explain(what, folder, lambda: cls(str(root), train=True, download=True))

    def read(train: bool) -> Split:
        with _corrupt_if_unreadable(f"{what} files in {folder} are corrupt or not in the idx format",
                                    f"delete {folder} and download them again"):  # fmt: skip
            ds = cls(str(root), train=train, download=False)
            x, y = ds.data, ds.targets
            if x.dim() != 3 or len(x) != len(y):
                raise ValueError(f"images of shape {tuple(x.shape)} with {len(y)} labels")
        return Split(fit_images(x.unsqueeze(1), channels, image_size), y.long())

    train, test = read(True), read(False)
    train, val = split_off(train, held_count(val_size, len(train)), split_seed)
    return Splits(train, val, test, classes=classes)


@facts(num_classes=10, train_pool=60000)
def load_mnist(root: str, download: bool, channels: int, image_size: int, val_size: float, split_seed: int) -> Splits:
    from torchvision.datasets import MNIST

    return load_idx(MNIST, "MNIST", root, download, channels, image_size, val_size, split_seed)


@facts(num_classes=10, train_pool=60000)
def load_fashion_mnist(root: str, download: bool, channels: int, image_size: int, val_size: float,
                       split_seed: int) -> Splits:  # fmt: skip
    from torchvision.datasets import FashionMNIST

    return load_idx(FashionMNIST, "Fashion-MNIST", root, download, channels, image_size, val_size, split_seed,
                    classes=tuple(FashionMNIST.classes))  # fmt: skip


# --------------------------------------------------------------------------- CIFAR-100


@facts(channels=3, image_size=32, num_classes=100, train_pool=50000)
def load_cifar100(root: str, download: bool, val_size: float, split_seed: int) -> Splits:
    from torchvision.datasets import CIFAR100

    return load_cifar(CIFAR100, root, download, val_size, split_seed)


# --------------------------------------------------------------------------- SVHN


def _read_svhn(path: Path) -> Split:
    import scipy.io as sio

    with _corrupt_if_unreadable(f"SVHN file {path} is corrupt or not in SVHN's .mat format",
                                "delete it and download it again"):  # fmt: skip
        mat = sio.loadmat(str(path))
        x = np.asarray(mat["X"])  # (32, 32, 3, N)
        y = np.asarray(mat["y"]).astype(np.int64).reshape(-1)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
            raise ValueError(f"X of shape {x.shape} ({x.dtype}) with {len(y)} labels")
    y[y == 10] = 0  # as torchvision: digit 0 is stored as 10
    return Split(torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))), torch.from_numpy(y))


@facts(channels=3, image_size=32, num_classes=10, train_pool=73257)
def load_svhn(root: str, download: bool, val_size: float, split_seed: int) -> Splits:
    from torchvision.datasets import SVHN
    from torchvision.datasets.utils import download_url

    root = Path(root).expanduser()
    files = {split: SVHN.split_list[split] for split in ("train", "test")}  # split -> [url, filename, md5]
    missing = [name for _, name, _ in files.values() if not (root / name).is_file()]
    if missing:
        if not download:
            raise missing_offline("SVHN", root, missing)
        for url, name, md5 in files.values():
            if not (root / name).is_file():
                download_or_explain("SVHN", root, lambda: download_url(url, str(root), name, md5))
    train, test = (_read_svhn(root / files[s][1]) for s in ("train", "test"))
    train, val = split_off(train, held_count(val_size, len(train)), split_seed)
    return Splits(train, val, test)
