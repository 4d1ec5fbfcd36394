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

import importlib
import inspect
import json
import logging
import pickle
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optimlab.engine.lazy import Lazy
from optimlab.errors import DataError

# imported on first use: the config checks read a loader's facts from this module without torch
torch = Lazy("torch")
F = Lazy("torch.nn.functional")

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
    classes: tuple[str, ...] | None = None  # a name per label, when the loader knows them


def class_names(classes: Sequence[str] | None, num_classes: int) -> list[str]:
    """A name per label: the loader's names, else the labels themselves ("0", "1", ...)."""
    names = [str(c) for c in classes or ()]
    return names + [str(i) for i in range(len(names), num_classes)]


# --------------------------------------------------------------------------- dataset entries
#
# A dataset entry (conf/data/<name>.yaml) names its loader with ``_target_``: a function
# that takes the entry's keys its signature declares and returns the images. The loader's
# contract (the README's "Your own data"):
#
# - it returns a :class:`Splits`, a mapping ``{"train": (x, y), "val": (x, y), "test": (x, y)}``
#   ("val" and "test" optional; "classes": a name per label, optional), or one pair ``(x, y)``;
#   a missing split is held out of the
#   training images (``data.val_size`` / ``data.test_size``: a count, or a fraction < 1,
#   seeded by ``data.split_seed``);
# - images ``x``: uint8 (0-255), shape ``(N, C, H, W)`` (or ``(N, H, W)`` for one channel),
#   C = ``data.channels``, H = W = ``data.image_size``; torch tensors or numpy arrays;
# - labels ``y``: integers in ``[0, data.num_classes)``, one per image.
#
# A loader may carry :class:`Facts` (``@facts(...)``): what its files always hold, so the
# config checks can judge ``data.channels``, ``batch_size``, ... before anything loads.


@dataclass(frozen=True)
class Facts:
    """What a dataset's files always hold (None: whatever the config says)."""

    channels: int | None = None  # set: the images have exactly these channels
    image_size: int | None = None  # set: the images are exactly this size
    num_classes: int | None = None  # the labels the files use: data.num_classes must be >= this
    train_pool: int | None = None  # images the training split and the held-out splits come from
    held_out: tuple[str, ...] = ("val_size",)  # keys whose counts come out of train_pool
    train_key: str | None = None  # the key that is the training split's size (generated data)

    def training_size(self, data: Mapping) -> int | None:
        if self.train_key is not None:
            return data.get(self.train_key)
        if self.train_pool is None:
            return None
        return self.train_pool - sum(held_count(data.get(k), self.train_pool) for k in self.held_out)


def facts(**known) -> Callable:
    """Decorator: attach :class:`Facts` to a loader."""

    def attach(loader: Callable) -> Callable:
        loader.facts = Facts(**known)
        return loader

    return attach


def held_count(size: float | None, n: int) -> int:
    """A held-out split's size: a count, or a fraction (< 1) of ``n``."""
    if not size:
        return 0
    return max(1, round(size * n)) if size < 1 else int(size)


def loader_of(target: str) -> Callable:
    """The loader function a ``data._target_`` names; DataError if it cannot be imported."""
    module_name, _, attr = str(target).rpartition(".")
    try:
        loader = getattr(importlib.import_module(module_name), attr) if module_name else None
    except (ImportError, AttributeError) as e:
        raise DataError(f"data._target_={target!r} is not valid: must be an importable function, module.function ({e})") from None
    if not callable(loader):
        raise DataError(f"data._target_={target!r} is not valid: must be an importable function, module.function")
    return loader


def load(data: Mapping) -> Splits:
    """Load the dataset a ``data`` config entry (a mapping) names with ``_target_``, and check
    what the loader returned against the entry (one-line DataError naming what is wrong)."""
    target = data.get("_target_")
    if not target:
        raise DataError("data._target_ is missing: a data entry names its loader function (see conf/data/*.yaml)")
    loader = loader_of(target)
    params = inspect.signature(loader).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: data[k] for k in data if not str(k).startswith("_")}
    else:
        kwargs = {k: data[k] for k in params if k in data}
        needed = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in kwargs
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]  # fmt: skip
        if needed:
            raise DataError(f"data._target_={target} needs data.{needed[0]}, which the data entry does not set")
    splits = as_splits(loader(**kwargs), data)
    limit = data.get("limit")
    if limit:  # debug=fast: the first `limit` images of each split
        splits = Splits(*(Split(s.x[:limit], s.y[:limit]) for s in (splits.train, splits.val, splits.test)),
                        classes=splits.classes)  # fmt: skip
    return splits


# The last dataset :func:`load_cached` loaded in this process, by its entry: the trials of a
# sweep that run in one worker process (the basic launcher) load their dataset once.
_LOADED: dict[str, Splits] = {}


def cache_key(data: Mapping) -> str:
    """What identifies a loaded dataset: its whole entry (any key may change what loads)."""
    return json.dumps(_plain(data), sort_keys=True, default=str)


def _plain(v):
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def load_cached(data: Mapping) -> Splits:
    """:func:`load`, served from memory when this process loaded the same entry last.

    One entry is kept (a sweep's trials share one dataset; a new entry replaces it). The
    splits are shared between runs, so nothing may change them in place: batches are
    index copies, and placement on another device copies. A loader whose files change on
    disk between two runs of one process is not seen again: such a process calls
    :func:`load`.
    """
    key = cache_key(data)
    found = _LOADED.get(key)
    if found is None:
        found = load(data)
        _LOADED.clear()
        _LOADED[key] = found
    return found


def _tensor(v, what: str, target: str) -> torch.Tensor:
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    raise DataError(f"data._target_={target} returned {what} of type {type(v).__name__}: must be a torch tensor or numpy array")


def _split(pair, name: str, target: str) -> Split:
    if isinstance(pair, Split):
        pair = (pair.x, pair.y)
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise DataError(f"data._target_={target} returned {name}={type(pair).__name__}: must be a pair (images, labels)")
    return Split(_tensor(pair[0], f"{name} images", target), _tensor(pair[1], f"{name} labels", target))


def as_splits(result, data: Mapping) -> Splits:
    """A loader's result as checked :class:`Splits` (see the contract above)."""
    target = data.get("_target_")
    classes = None
    if isinstance(result, Splits):
        parts = {"train": result.train, "val": result.val, "test": result.test}
        classes = result.classes
    elif isinstance(result, Mapping):
        unknown = sorted(set(result) - {"train", "val", "test", "classes"})
        if unknown or "train" not in result:
            raise DataError(
                f"data._target_={target} returned splits {sorted(result)}: must have 'train' and may have 'val', "
                f"'test' (and 'classes', a name per label)"
            )
        parts = {k: v for k, v in result.items() if k != "classes"}
        classes = result.get("classes")
    else:
        parts = {"train": result}
    if classes is not None:
        classes = tuple(str(c) for c in classes)
    parts = {k: _split(v, k, target) for k, v in parts.items()}
    for name, split in parts.items():
        parts[name] = check_split(split, name, data)
    seed = int(data.get("split_seed", 0))
    for name, offset in (("test", 0), ("val", 1)):
        if name not in parts:
            key = f"{name}_size"
            n = held_count(data.get(key), len(parts["train"]))
            if n < 1:
                raise DataError(f"data.{key} must be set: data._target_={target} returned no {name} split to use instead")
            if n >= len(parts["train"]):
                raise DataError(f"data.{key}={data.get(key)} is not valid: must be < the {len(parts['train'])} training images")
            parts["train"], parts[name] = split_off(parts["train"], n, seed + offset)
    return Splits(parts["train"], parts["val"], parts["test"], classes=classes)


def check_split(split: Split, name: str, data: Mapping) -> Split:
    """One split checked against the entry's channels, image_size and num_classes."""
    target = data.get("_target_")
    where = f"data._target_={target} returned {name}"
    x, y = split.x, split.y
    if x.dtype != torch.uint8:
        raise DataError(f"{where} images of dtype {x.dtype}: must be uint8 (0-255)")
    if x.dim() == 3:
        x = x.unsqueeze(1)  # (N, H, W): one channel
    if x.dim() != 4:
        raise DataError(f"{where} images of shape {tuple(x.shape)}: must be (N, C, H, W)")
    n, c, h, w = x.shape
    channels, size, classes = data.get("channels"), data.get("image_size"), data.get("num_classes")
    if channels is not None and c != channels:
        raise DataError(f"{where} images with {c} channels (shape {tuple(x.shape)}, (N, C, H, W)) but data.channels={channels}")
    if size is not None and (h, w) != (size, size):
        raise DataError(f"{where} images of {h}×{w} but data.image_size={size}: must be {size}×{size}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise DataError(f"{where} labels of dtype {y.dtype}: must be integers")
    if y.dim() != 1 or len(y) != n:
        raise DataError(f"{where} labels of shape {tuple(y.shape)} for {n} images: must be one label per image, shape ({n},)")
    if n == 0:
        raise DataError(f"{where}: no images")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or (classes is not None and hi >= classes):
        raise DataError(f"{where} labels in [{lo}, {hi}]: must be in [0, {classes}) (data.num_classes={classes})")
    return Split(x.contiguous(), y.long())


def fit_images(x: torch.Tensor, channels: int, image_size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 ``(N, c, h, w)`` images as ``channels``×``image_size``² (bilinear resize; one
    channel repeated, or RGB to luminance), in chunks: float temporaries stay small."""
    n, c, h, w = x.shape
    if c not in (1, channels) and not (c == 3 and channels == 1):
        raise DataError(f"data.channels={channels} is not valid: these images have {c} channels (use {c}, or 1)")
    if (h, w) == (image_size, image_size) and c == channels:
        return x
    out = torch.empty(n, channels, image_size, image_size, dtype=torch.uint8)
    lum = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    for i in range(0, n, chunk):
        part = x[i : i + chunk].float()
        if c == 3 and channels == 1:
            part = (part * lum).sum(1, keepdim=True)
        if (h, w) != (image_size, image_size):
            part = F.interpolate(part, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        out[i : i + chunk] = part.round().clamp(0, 255).to(torch.uint8).expand(-1, channels, -1, -1)
    return out


def download_or_explain(what: str, folder: Path, fetch: Callable[[], None]) -> None:
    """Run ``fetch`` (a torchvision download) with a short network timeout; any failure is one
    DataError line saying where to put the files instead."""
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # offline machines must fail in seconds, not hang
    try:
        log.info("downloading %s into %s", what, folder)
        fetch()
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(
            f"{what} is not in {folder} and downloading it failed ({e.__class__.__name__}: {first}). "
            f"Put its files there or point data.root at the folder that holds them; "
            f"data=digits and data=synthetic work offline."
        ) from e
    finally:
        socket.setdefaulttimeout(old_timeout)


def missing_offline(what: str, folder: Path, missing: Sequence[str]) -> DataError:
    return DataError(
        f"{what} is not in {folder} (missing: {', '.join(missing)}) and data.download=false. "
        f"Put its files there, set data.download=true when online, "
        f"or use data=digits / data=synthetic, which work offline."
    )


def split_off(split: Split, size: int, seed: int) -> tuple[Split, Split]:
    """Hold out ``size`` random samples of ``split`` (a fixed seed: the split never moves)."""
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    keep, held = perm[size:], perm[:size]
    return Split(split.x[keep], split.y[keep]), Split(split.x[held], split.y[held])


# --------------------------------------------------------------------------- CIFAR-10

CIFAR10_FOLDER = "cifar-10-batches-py"  # torchvision's CIFAR10.base_folder, train_list, test_list
CIFAR10_TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR10_TEST_FILE = "test_batch"


def read_cifar_batch(path: Path, what: str = "CIFAR-10") -> Split:
    # The python version of CIFAR-10/100: pickled dicts with 'data' (N×3072 uint8) and
    # 'labels' (CIFAR-10) or 'fine_labels' (CIFAR-100).
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
        if len(labels) != len(data):
            raise ValueError(f"{len(data)} images but {len(labels)} labels")
    except Exception as e:  # any unreadable file is the same problem for the user
        raise DataError(
            f"{what} file {path} is corrupt or not in the python {what} format ({e}); "
            f"delete {path.parent} and download it again"
        ) from e
    return Split(torch.from_numpy(data.copy()), torch.from_numpy(labels))


def _download_cifar(cls, root: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    download_or_explain(
        cls.__name__.replace("CIFAR", "CIFAR-"), root / cls.base_folder,
        lambda: download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5),
    )  # fmt: skip


def read_cifar_names(folder: Path, cls) -> tuple[str, ...] | None:
    """The class names in the dataset's meta file (CIFAR-10 ``batches.meta``: ``label_names``,
    CIFAR-100 ``meta``: ``fine_label_names``); None when the file is missing or unreadable
    (the labels then name the classes: names are for predictions, never worth failing a run)."""
    try:
        with open(folder / cls.meta["filename"], "rb") as f:
            names = pickle.load(f, encoding="latin1")[cls.meta["key"]]
        return tuple(str(n) for n in names)
    except Exception:  # noqa: BLE001 - see above
        return None


def load_cifar(cls, root: str, download: bool, val_size: float, split_seed: int) -> Splits:
    """CIFAR-10 or CIFAR-100 (torchvision's class ``cls`` names the files) in its python
    on-disk layout, ``<root>/<cls.base_folder>/``; the validation split is held out of training."""
    what = cls.__name__.replace("CIFAR", "CIFAR-")
    root = Path(root).expanduser()
    folder = root / cls.base_folder
    train_files = [name for name, _ in cls.train_list]
    test_files = [name for name, _ in cls.test_list]
    missing = [f for f in [*train_files, *test_files] if not (folder / f).is_file()]
    if missing:
        if not download:
            raise missing_offline(what, folder, missing)
        _download_cifar(cls, root)
    parts = [read_cifar_batch(folder / f, what) for f in train_files]
    train = Split(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))
    test = read_cifar_batch(folder / test_files[0], what)
    train, val = split_off(train, held_count(val_size, len(train)), split_seed)
    return Splits(train, val, test, classes=read_cifar_names(folder, cls))


@facts(channels=3, image_size=32, num_classes=10, train_pool=50000)
def load_cifar10(root: str, download: bool, val_size: float, split_seed: int) -> Splits:
    from torchvision.datasets import CIFAR10

    return load_cifar(CIFAR10, root, download, val_size, split_seed)


# --------------------------------------------------------------------------- digits


def read_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (images (1797, 8, 8) in 0..16, labels), read from its
    CSV without importing scikit-learn (which costs about a second, more on a busy CPU)."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    where = [Path(p) / "datasets" / "data" / "digits.csv.gz" for p in (spec.submodule_search_locations or [])] if spec else []
    path = next((p for p in where if p.is_file()), None)
    if path is None:  # another layout: scikit-learn's own loader
        from sklearn.datasets import load_digits as sk_digits

        bunch = sk_digits()
        return bunch.images, bunch.target
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


@facts(num_classes=10, train_pool=1797, held_out=("test_size", "val_size"))
def load_digits(channels: int, image_size: int, test_size: int, val_size: int, split_seed: int) -> Splits:
    images, target = read_sklearn_digits()
    x = torch.from_numpy(images).float().unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.repeat(1, channels, 1, 1)
    full = Split((x * 255).round().clamp(0, 255).to(torch.uint8), torch.from_numpy(target).long())
    rest, test = split_off(full, held_count(test_size, len(full)), split_seed)
    train, val = split_off(rest, held_count(val_size, len(full)), split_seed + 1)
    return Splits(train, val, test)


# --------------------------------------------------------------------------- synthetic


SYNTHETIC_CHUNK = 4096


@facts(train_key="train_size")
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
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]  # what a user of the model applies
        self.classes = splits.classes
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
