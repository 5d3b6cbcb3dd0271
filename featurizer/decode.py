"""Decode image files into uint8 tensors and batch them; shared by featurizer and trainers."""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

try:  # torchvision 0.29 deprecates its decoders for TorchCodec; without them PIL decodes everything
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
except ImportError:  # pragma: no cover
    decode_jpeg = None
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

__all__ = ["Preprocess", "DecodedBatch", "ImageDataset", "decode_image", "resize_image", "make_loader",
           "DECODE_ERRORS", "failure_reason"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a network input.

    The shorter side is resized to ``resize`` and the centre ``crop`` x ``crop`` is
    kept (``mode="crop"``), or the longer side is resized to ``crop`` and the rest
    padded with zeros (``mode="pad"``, keeps the aspect ratio). ``mean``/``std``
    apply to pixel values scaled to [0, 1].
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    mode: str = "crop"
    grayscale: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(x) for x in known[key])
        return cls(**known)

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    @property
    def decode_size(self) -> int:
        """The smallest shorter side a decoded image may have: what the resize step scales to."""
        return self.resize if self.mode == "crop" else self.crop


def decode_image(path: Path | bytes, target: int, grayscale: bool = False) -> torch.Tensor:
    """Read an image file (or its encoded bytes) as a uint8 tensor [C, H, W] (RGB, or one channel if grayscale).

    EXIF orientation is applied; palette, RGBA, CMYK and 16-bit images are converted.
    JPEGs much larger than ``target`` are decoded at reduced size (DCT scaling) so that
    the shorter side stays >= ``target``. Raises OSError/ValueError/RuntimeError (or
    PIL's errors) for files that are not decodable images; callers record the reason.
    """
    with warnings.catch_warnings():
        # Over PIL's pixel limit is a decompression-bomb risk: treat the warning as an error.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as im:
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1) if im.format in ("JPEG", "TIFF", "WEBP", "PNG") else 1
            if decode_jpeg is not None and _fast_jpeg(im, orientation, target, grayscale):
                # libjpeg-turbo through torchvision decodes about 3x faster than PIL + convert.
                warnings.simplefilter("ignore", DeprecationWarning)
                data = torch.frombuffer(bytearray(path), dtype=torch.uint8) if isinstance(path, bytes) \
                    else read_file(str(path))
                return decode_jpeg(data, mode=ImageReadMode.RGB)
            if im.format == "JPEG":
                im.draft("L" if grayscale else "RGB", (target, target))
            im.load()
            im = ImageOps.exif_transpose(im)
            im = _to_8bit(im).convert("L" if grayscale else "RGB")
            array = np.array(im, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _fast_jpeg(im: Image.Image, orientation: int, target: int, grayscale: bool) -> bool:
    return (
        im.format == "JPEG"
        and im.mode in ("RGB", "L")
        and orientation == 1
        and not grayscale
        and min(im.size) < 2 * target
    )


def _to_8bit(im: Image.Image) -> Image.Image:
    """PIL clips 16/32-bit integer images at 255 when converting; scale them instead."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        array = np.asarray(im, dtype=np.float64)
        top = 1.0 if array.max() <= 1.0 else 255.0
        return Image.fromarray(np.clip(array * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        return im.convert("RGBA")
    return im


def resize_image(image: torch.Tensor, pre: Preprocess, crop: bool = True) -> torch.Tensor:
    """Resize and crop (or pad) a uint8 [C, H, W] tensor to [C, crop, crop].

    With ``crop=False`` (mode "crop" only) the shorter side is resized and nothing is cut,
    leaving room for a random crop later.
    """
    interpolation = InterpolationMode(pre.interpolation)
    if pre.mode == "pad":
        h, w = image.shape[-2:]
        scale = pre.crop / max(h, w)
        size = [max(1, round(h * scale)), max(1, round(w * scale))]
        image = TF.resize(image, size, interpolation=interpolation, antialias=True)
        dh, dw = pre.crop - image.shape[-2], pre.crop - image.shape[-1]
        return TF.pad(image, [dw // 2, dh // 2, dw - dw // 2, dh - dh // 2])
    image = TF.resize(image, [pre.resize], interpolation=interpolation, antialias=True)
    return TF.center_crop(image, [pre.crop, pre.crop]) if crop else image


@dataclass
class DecodedBatch:
    """Images that decoded (``indices`` into the dataset's file list) and the ones that did not."""

    indices: list[int]
    images: torch.Tensor | list[torch.Tensor]  # a list when the images differ in size
    failures: list[tuple[int, str]] = field(default_factory=list)


class ImageDataset(Dataset):
    """Files -> (index, uint8 image [C, crop, crop] or None, failure reason or None).

    ``files`` holds paths, or objects whose ``read()`` returns the encoded bytes (tar members).

    ``crop=False``: images keep their aspect ratio (shorter side ``pre.resize``).
    """

    def __init__(self, files: Sequence, pre: Preprocess, indices: Sequence[int] | None = None,
                 crop: bool = True):
        self.files = list(files)
        self.pre = pre
        self.crop = crop
        self.indices = list(range(len(self.files))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        index = self.indices[i]
        try:
            item = self.files[index]
            data = item if isinstance(item, (str, os.PathLike)) else item.read()
            image = decode_image(data, self.pre.decode_size, self.pre.grayscale)
            return index, resize_image(image, self.pre, self.crop), None
        except DECODE_ERRORS as exc:
            return index, None, failure_reason(exc)


# What decode_image raises for input that is not a decodable image (or is over the pixel limit).
DECODE_ERRORS = (OSError, ValueError, RuntimeError, SyntaxError, UnidentifiedImageError,
                 Image.DecompressionBombError, Image.DecompressionBombWarning)


def failure_reason(exc: BaseException) -> str:
    """One readable line for a decoding failure (what featurize records and the server answers)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    # torchvision prefixes its messages with a C++ source location; keep what a user can read.
    text = text.split(".cpp:")[-1].lstrip("0123456789, ") if ".cpp:" in text else text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def collate_decoded(items: list[tuple[int, torch.Tensor | None, str | None]]) -> DecodedBatch:
    good = [(i, img) for i, img, _ in items if img is not None]
    failures = [(i, reason) for i, img, reason in items if img is None]
    sizes = {img.shape for _, img in good}
    if len(sizes) > 1:
        return DecodedBatch([i for i, _ in good], [img for _, img in good], failures)
    images = torch.stack([img for _, img in good]) if good else torch.empty(0, dtype=torch.uint8)
    return DecodedBatch([i for i, _ in good], images, failures)


def make_loader(dataset: ImageDataset, batch_size: int, workers: int, pin_memory: bool = False,
                collate_fn: Callable[[list], Any] | None = None,
                worker_init_fn: Callable[[int], None] | None = None) -> DataLoader:
    """An ordered loader of DecodedBatch (or what ``collate_fn`` makes); items are made in ``workers`` processes."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_fn or collate_decoded,
        worker_init_fn=worker_init_fn,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
