"""Datasets as device-resident uint8 tensors, and the batches the training loop eats.

Each dataset is loaded once into ``(N, C, H, W)`` uint8 tensors (train / val / test).
:class:`DeviceData` moves them to the device, then every batch is an index slice of a
seeded permutation, normalised and augmented on the device as a whole batch: no
per-sample Python in the hot path.

A dataset too large for the device's memory is *streamed* instead (``data_placement``):
it stays in host memory, each batch is gathered there, staged in pinned memory and
copied to the device asynchronously; normalisation and augmentation still run on the
device, from the same generator, so both placements give the same batches.
"""

from __future__ import annotations

import logging
import pickle
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from optimlab.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) uint8
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split


def load(data: dict) -> Splits:
    """Load the dataset a ``data`` config entry (as a plain dict) names; each loader takes
    the keys its signature declares."""
    import inspect

    loaders = {"cifar10": load_cifar10, "digits": load_digits, "synthetic": make_synthetic}
    if data["name"] not in loaders:
        raise DataError(f"data.name={data['name']!r} is not a known dataset; choose one of {sorted(loaders)}")
    loader = loaders[data["name"]]
    return loader(**{k: data[k] for k in inspect.signature(loader).parameters if k in data})


def _split_off(split: Split, size: int, seed: int) -> tuple[Split, Split]:
    """Hold out ``size`` random samples of ``split`` (a fixed seed: the split never moves)."""
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    keep, held = perm[size:], perm[:size]
    return Split(split.x[keep], split.y[keep]), Split(split.x[held], split.y[held])


# --------------------------------------------------------------------------- CIFAR-10

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST_FILE = "test_batch"


def _read_cifar_batch(path: Path) -> Split:
    # The python version of CIFAR-10: pickled dicts with 'data' (N×3072 uint8) and 'labels'.
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
        if len(labels) != len(data):
            raise ValueError(f"{len(data)} images but {len(labels)} labels")
    except Exception as e:  # any unreadable file is the same problem for the user
        raise DataError(
            f"CIFAR-10 file {path} is corrupt or not in the python CIFAR-10 format ({e}); "
            f"delete {path.parent} and download it again"
        ) from e
    return Split(torch.from_numpy(data.copy()), torch.from_numpy(labels))


def _download_cifar10(root: Path) -> None:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # offline machines must fail in seconds, not hang
    try:
        log.info("downloading CIFAR-10 into %s", root)
        download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
    except Exception as e:
        raise DataError(
            f"CIFAR-10 is not in {root / CIFAR10_FOLDER} and downloading it failed ({e.__class__.__name__}: {e}). "
            f"Put the extracted python version of CIFAR-10 (cifar-10-python.tar.gz) there or point "
            f"data.root=<folder containing {CIFAR10_FOLDER}> at it; data=digits and data=synthetic work offline."
        ) from e
    finally:
        socket.setdefaulttimeout(old_timeout)


def load_cifar10(root: str, download: bool, val_size: int, split_seed: int) -> Splits:
    root = Path(root).expanduser()
    folder = root / CIFAR10_FOLDER
    files = [folder / f for f in [*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE]]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        if not download:
            raise DataError(
                f"CIFAR-10 is not in {folder} (missing: {', '.join(missing)}) and data.download=false. "
                f"Put the extracted python version of CIFAR-10 there, set data.download=true when online, "
                f"or use data=digits / data=synthetic, which work offline."
            )
        _download_cifar10(root)
    parts = [_read_cifar_batch(folder / f) for f in CIFAR10_TRAIN_FILES]
    train = Split(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))
    test = _read_cifar_batch(folder / CIFAR10_TEST_FILE)
    train, val = _split_off(train, val_size, split_seed)
    return Splits(train, val, test)


# --------------------------------------------------------------------------- digits


def load_digits(channels: int, image_size: int, test_size: int, val_size: int, split_seed: int) -> Splits:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.repeat(1, channels, 1, 1)
    full = Split((x * 255).round().clamp(0, 255).to(torch.uint8), torch.from_numpy(bunch.target).long())
    rest, test = _split_off(full, test_size, split_seed)
    train, val = _split_off(rest, val_size, split_seed + 1)
    return Splits(train, val, test)


# --------------------------------------------------------------------------- synthetic


SYNTHETIC_CHUNK = 4096


def make_synthetic(
    channels: int, image_size: int, num_classes: int, train_size: int, val_size: int, test_size: int,
    noise: float, split_seed: int,
) -> Splits:
    """Class prototypes (smooth random images) plus Gaussian noise, all from ``split_seed``."""
    g = torch.Generator().manual_seed(split_seed)
    c, s, k = channels, image_size, num_classes
    coarse = torch.randn(k, c, 4, 4, generator=g)
    protos = F.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)
    protos = protos / protos.flatten(1).std(dim=1).view(k, 1, 1, 1)

    def sample(n: int) -> Split:
        y = torch.randint(0, k, (n,), generator=g)
        x = torch.empty(n, c, s, s, dtype=torch.uint8)
        for i in range(0, n, SYNTHETIC_CHUNK):  # float temporaries stay small (peak RSS)
            j = min(i + SYNTHETIC_CHUNK, n)
            xf = protos[y[i:j]] + noise * torch.randn(j - i, c, s, s, generator=g)
            x[i:j] = (128 + 40 * xf).round().clamp(0, 255).to(torch.uint8)
        return Split(x, y)

    return Splits(sample(train_size), sample(val_size), sample(test_size))


# --------------------------------------------------------------------------- on-device batches


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG for one epoch's order and augmentation: a pure function of (seed, epoch),
    so a run resumed at any epoch sees exactly the batches an uninterrupted run sees."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Indices outside [0, n) mirrored back in, as reflect padding does."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def crop_and_flip(
    x: torch.Tensor, padding: int, flip: bool, g: torch.Generator, channels_last: bool = False
) -> torch.Tensor:
    """Random crops after reflect padding, then random horizontal flips, as ONE gather
    straight from ``x`` (the draws: crop offsets dy, dx, then the flips, from ``g``).

    No padded copy,
    any dtype (crop the uint8 images, then normalise only what is kept), and with
    ``channels_last`` the gather writes that layout directly (no conversion copy).
    """
    b, c, h, w = x.shape
    dev = x.device
    rows = torch.arange(h, device=dev).expand(b, h)
    cols = torch.arange(w, device=dev).expand(b, w)
    if padding:
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=g).to(dev)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=g).to(dev)
        rows = _reflect(rows + (dy - padding)[:, None], h)
        cols = _reflect(cols + (dx - padding)[:, None], w)
    if flip:
        flipped = (torch.rand(b, generator=g) < 0.5).to(dev)
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=dev)[:, None, None]
    if channels_last:  # gather (b, h, w, c) rows of c contiguous values: an NCHW view in channels_last
        return x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return x[batch[..., None], torch.arange(c, device=dev)[None, :, None, None], rows[:, None, :, None],
             cols[:, None, None, :]]  # fmt: skip


DEVICE_MEMORY_SHARE = 0.5  # `auto` keeps data on a GPU only if it takes at most this share of free memory


def channel_stats(x: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images in [0, 1], in chunks (no float copy of the set)."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk].to("cpu", torch.float64).div_(255).transpose(0, 1).reshape(c, -1)
        total += part.sum(1)
        squares += part.square().sum(1)
    n = x.numel() // c
    mean = total / n
    std = ((squares - n * mean.square()) / max(n - 1, 1)).clamp_min(0).sqrt()
    return mean.float(), std.float()


def fits_on_device(splits: Splits, device: torch.device) -> bool:
    """Whether the uint8 splits fit comfortably in the device's free memory."""
    if device.type != "cuda":
        return True  # cpu: the data is in host memory anyway; mps: unified memory
    need = sum(s.x.nbytes + s.y.nbytes for s in (splits.train, splits.val, splits.test))
    free, _ = torch.cuda.mem_get_info(device)
    return need <= DEVICE_MEMORY_SHARE * free


class DeviceData:
    """The three splits on one device, served as normalised (and augmented) batches.

    ``placement``: ``device`` keeps the uint8 splits on the device; ``host`` streams each
    batch from (pinned) host memory; ``auto`` picks ``device`` when the data fits
    (:func:`fits_on_device`). The batches are the same either way. ``mean``/``std`` of
    None: the training split's per-channel statistics.
    """

    def __init__(
        self,
        splits: Splits,
        device: torch.device,
        *,
        normalize: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_padding: int = 0,
        flip: bool = False,
        shuffle: bool = True,
        channels_last: bool = False,
        placement: str = "auto",
    ):
        self.device = device
        self.streaming = placement == "host" or (placement == "auto" and not fits_on_device(splits, device))
        if self.streaming:
            log.info("data_placement: streaming batches from host memory to %s", device)
        store = torch.device("cpu") if self.streaming else device
        self.train, self.val, self.test = (
            Split(s.x.to(store), s.y.to(store)) for s in (splits.train, splits.val, splits.test)
        )
        c = self.train.x.shape[1]
        if normalize:
            if mean is None or std is None:
                stats_mean, stats_std = channel_stats(splits.train.x)
            mean = torch.tensor(mean, dtype=torch.float32) if mean is not None else stats_mean
            std = torch.tensor(std, dtype=torch.float32) if std is not None else stats_std
        else:
            mean, std = torch.zeros(c), torch.ones(c)
        # x_norm = (x/255 - mean) / std, folded into one multiply-add
        self.scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1).to(device)
        self.shift = (-mean / std).view(1, -1, 1, 1).to(device)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.shuffle = bool(shuffle)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x.float(), self.scale)

    def _fetch(self, data: Split, idx: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images and labels of ``idx``, on the device."""
        x, y = data.x[idx], data.y[idx]
        if self.streaming:
            if self.device.type == "cuda":  # pinned staging: the copy overlaps compute
                x, y = x.pin_memory(), y.pin_memory()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return x, y

    def steps_per_epoch(self, batch_size: int) -> int:
        return -(-len(self.train) // batch_size)

    def train_batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = epoch_generator(seed, epoch)
        n = len(self.train)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        order = order.to(self.train.x.device)
        for start in range(0, n, batch_size):
            x, y = self._fetch(self.train, order[start : start + batch_size])
            if self.crop_padding or self.flip:  # on the uint8 images: a quarter of the bytes to move
                cl = self.memory_format == torch.channels_last
                x = crop_and_flip(x, self.crop_padding, self.flip, g, channels_last=cl)
            x = self._normalize(x)  # keeps x's memory format
            yield x.contiguous(memory_format=self.memory_format), y

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data: Split = getattr(self, split)
        for start in range(0, len(data), batch_size):
            x, y = self._fetch(data, slice(start, start + batch_size))
            yield self._normalize(x).contiguous(memory_format=self.memory_format), y
