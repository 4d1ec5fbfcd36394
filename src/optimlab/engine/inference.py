"""A trained model's inputs: images prepared the way its training data was (channels, size,
normalisation), for predictions outside the training loop. Plain Python/torch, no config.

An image file is read as ``data=image_folder`` reads one (PIL: made ``channels`` deep,
resized to ``image_size``² with bilinear filtering); a uint8 tensor or array must already
have the model's shape. Then the normalisation the run applied: ``(x / 255 - mean) / std``,
as one multiply-add (:class:`optimlab.engine.data.DeviceData` does the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from optimlab.engine.image_folder import GRAY_MODES, IMAGE_EXTENSIONS, read_image
from optimlab.errors import DataError


def image_files(target: Path) -> list[Path]:
    """``target`` itself (an image file), or the image files under the folder ``target``
    (recursively, sorted; hidden files and other extensions skipped); DataError if none."""
    target = Path(target)
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise DataError(f"{target} does not exist: give an image file or a folder of images")
    found = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(target).parts))  # fmt: skip
    if not found:
        raise DataError(f"{target} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return found


@dataclass(frozen=True)
class Preprocess:
    """Image -> the normalised ``(channels, image_size, image_size)`` float tensor the model takes.

    ``transform(image)``: ``image`` is a path, a PIL image, or a uint8 tensor/array of shape
    ``(C, H, W)`` (``(H, W)`` for one channel) already of the model's size.
    ``transform.batch(images)``: a ``(N, C, S, S)`` batch. An image of the other kind
    (colour for a grayscale model, or grayscale for a colour one) is refused with one
    line, unless ``convert`` (then it is converted, as ``data.mixed_modes=convert`` does).
    """

    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    convert: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def pixels(self, image: Any) -> torch.Tensor:
        """``image`` as uint8 ``(C, S, S)``: read (a path, a PIL image) or checked (a tensor or array)."""
        if isinstance(image, (str, Path)):
            return self._read(Path(image))
        if hasattr(image, "mode") and hasattr(image, "convert"):  # a PIL image
            return self._from_pil(image, "the image")
        x = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
        if not isinstance(x, torch.Tensor):
            raise DataError(f"an image of type {type(image).__name__}: give a path, a PIL image or a uint8 tensor")
        if x.dtype != torch.uint8:
            raise DataError(f"an image of dtype {x.dtype}: must be uint8 (0-255), as the run's data was")
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if tuple(x.shape) != self.shape:
            raise DataError(f"an image of shape {tuple(x.shape)}: the run's model takes {self.shape} (C, H, W)")
        return x

    def _read(self, path: Path) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                self._check_mode(img.mode, f"image {path}")
        except (OSError, UnidentifiedImageError) as e:
            raise DataError(f"image {path} cannot be read ({type(e).__name__}: {e})") from None
        arr, _ = read_image(path, self.channels, self.image_size)
        return torch.from_numpy(arr.copy())

    def _from_pil(self, img, what: str) -> torch.Tensor:
        from PIL import Image

        self._check_mode(img.mode, what)
        img = img.convert("L" if self.channels == 1 else "RGB")
        if img.size != (self.image_size, self.image_size):
            img = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy((arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)).copy())

    def _check_mode(self, mode: str, what: str) -> None:
        gray = mode in GRAY_MODES
        if self.convert or gray == (self.channels == 1) or self.channels not in (1, 3):
            return
        kind, want = ("grayscale", "colour (3 channels)") if gray else ("colour", "grayscale (1 channel)")
        raise DataError(f"{what} is {kind} (mode {mode}) but the run's model takes {want} images: "
                        f"convert it, or pass --convert (convert=True) to convert every image")  # fmt: skip

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``(..., C, S, S)`` -> float, normalised as in training."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return torch.addcmul(-mean / std, x.float(), 1.0 / (255.0 * std))

    def __call__(self, image: Any) -> torch.Tensor:
        return self.normalize(self.pixels(image))

    def batch(self, images: Sequence[Any]) -> torch.Tensor:
        return self.normalize(torch.stack([self.pixels(i) for i in images]))


@torch.inference_mode()
def probabilities(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Softmax of ``model`` over a normalised ``(N, C, S, S)`` batch, on the model's device, in chunks."""
    model.eval()
    device = next(iter(model.parameters())).device
    parts = [torch.softmax(model(x[i : i + batch_size].to(device)).float(), dim=1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0)
