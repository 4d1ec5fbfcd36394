"""A folder of your own images, one sub-folder per class, loaded once as uint8 splits.

::

    <root>/cat/001.png            # no split folders: val and test are held out of
    <root>/dog/002.jpg            # the images (data.val_size, data.test_size, data.split_seed)

    <root>/train/cat/001.png      # or split folders: train/ and, when present,
    <root>/val/cat/101.png        # val/ and test/ (each with the same class folders);
    <root>/test/dog/201.png       # a missing one is held out of train/

Class names are the sorted sub-folder names of ``train/`` (or of ``<root>``), label ``i`` is
the ``i``-th. Every image (any size) is resized to ``image_size``×``image_size`` and made
``channels`` deep (1: grayscale, 3: RGB). A folder that mixes grayscale and colour images
is an error unless ``mixed_modes=convert`` (then every image is converted, as torchvision's
``ImageFolder`` does). Files that are not images (by extension) and hidden files are skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from optimlab.engine.lazy import Lazy
from optimlab.errors import DataError

torch = Lazy("torch")  # imported on first use: the config checks read the loaders' facts without it

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")  # torchvision's
SPLIT_FOLDERS = ("train", "val", "test")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS)  # fmt: skip


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_image(path: Path, channels: int, image_size: int) -> tuple[np.ndarray, bool]:
    """One image as (C, S, S) uint8, and whether it is grayscale at heart."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            gray = img.mode in GRAY_MODES
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"image {path} cannot be read ({type(e).__name__}: {e}); remove or replace it") from None
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)), gray


def _load_split(folder: Path, classes: list[str], channels: int, image_size: int, mixed_modes: str):
    xs, ys, first = [], [], {}
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue  # a split may lack a class
        files = _images(class_dir)
        if not files:
            raise DataError(
                f"data.root: class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                f"add images or remove the folder"
            )
        for path in files:
            arr, gray = read_image(path, channels, image_size)
            first.setdefault(gray, path)
            if len(first) == 2 and mixed_modes != "convert":
                raise DataError(
                    f"data.root={folder} mixes grayscale and colour images ({first[True].name} is grayscale, "
                    f"{first[False].name} is colour): make them one mode, or set data.mixed_modes=convert to "
                    f"convert every image to data.channels={channels}"
                )
            xs.append(arr)
            ys.append(label)
    if not xs:
        raise DataError(f"data.root: {folder} has no images in its class folders")
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys, dtype=torch.int64)


def load_image_folder(root: str, channels: int, image_size: int, num_classes: int, mixed_modes: str = "error") -> dict:
    if root is None:
        raise DataError("data.root=None is not valid: data=image_folder needs data.root=<folder with one sub-folder per class>")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"data.root={root!r} is not valid: no such folder")
    if channels not in (1, 3):
        raise DataError(f"data.channels={channels} is not valid: data=image_folder makes 1 (grayscale) or 3 (RGB) channels")
    split_dirs = {s: base / s for s in SPLIT_FOLDERS if (base / s).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise DataError(f"data.root={root!r} has {'/'.join(split_dirs)} but no train/ folder: add train/<class>/...")
    train_dir = split_dirs.get("train", base)
    classes = [p.name for p in _class_folders(train_dir)]
    if not classes:
        raise DataError(f"data.root={root!r} is not valid: {train_dir} has no class sub-folders (one per class, with images in each)")
    if len(classes) > num_classes:
        raise DataError(
            f"data.num_classes={num_classes} is not valid: {train_dir} has {len(classes)} class folders "
            f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); set data.num_classes={len(classes)}"
        )
    for split, folder in split_dirs.items():
        unknown = sorted({p.name for p in _class_folders(folder)} - set(classes))
        if unknown:
            raise DataError(f"data.root: {folder} has class folders that train/ lacks: {', '.join(unknown)}")
    folders = split_dirs or {"train": base}
    return {**{s: _load_split(f, classes, channels, image_size, mixed_modes) for s, f in folders.items()},
            "classes": classes}  # fmt: skip
