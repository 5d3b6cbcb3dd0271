"""Decode image files into uint8 tensors and batch them; shared by featurizer and trainers."""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, get_worker_info

try:  # torchvision 0.29 deprecates its decoders for TorchCodec; without them PIL decodes everything
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
except ImportError:  # pragma: no cover
    decode_jpeg = None
try:  # the same libjpeg-turbo, the same pixels, 0.65 instead of 0.93 ms for a 500x375 photo (docs/precision.md)
    import simplejpeg
except ImportError:  # pragma: no cover - a platform without its wheel: torchvision decodes
    simplejpeg = None
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from alexfeat.choices import RESIZE_MODES, check_choice
from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.sources.folders import DEFAULT_MAX_PIXELS

__all__ = ["Preprocess", "DecodedBatch", "ImageDataset", "decode_image", "resize_image", "make_loader", "stack_images",
           "DECODE_ERRORS", "failure_reason"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_EXIF_ORIENTATION = 0x0112
_MAX_ASPECT = 4
# What one image's decode may hold: the raster PIL loads (4 bytes a pixel for RGB) plus its reduction.
DECODE_BUDGET = 700 * 2**20
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F"})
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# alexfeat applies DEFAULT_MAX_PIXELS (or --max-pixels) itself, before anything is decoded.
Image.MAX_IMAGE_PIXELS = None


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

    def __post_init__(self) -> None:
        # Every way of building one (CLI overrides, checkpoints, stores) passes here: std 0 would
        # otherwise give all-NaN features and a successful exit.
        if self.resize < 1 or self.crop < 1:
            raise AlexfeatError(f"--resize and --crop must be positive, got {self.resize} and {self.crop}")
        if self.mode == "crop" and self.resize < self.crop:
            raise AlexfeatError(f"--resize {self.resize} is smaller than --crop {self.crop}: the crop would not fit")
        for key in ("mean", "std"):
            if isinstance(getattr(self, key), str):  # len("0.5,0.5,0.5") is 11: say what was wrong instead
                raise AlexfeatError(f"--{key} takes {self.channels} numbers, one per channel, not the string "
                                    f"{getattr(self, key)!r}: in Python, a tuple such as (0.5, 0.5, 0.5)")
            if len(getattr(self, key)) != self.channels:
                raise AlexfeatError(f"--{key} needs {self.channels} comma-separated values (one per channel), "
                                    f"got {len(getattr(self, key))}")
        if not all(s > 0 for s in self.std) or not all(math.isfinite(x) for x in (*self.mean, *self.std)):
            raise AlexfeatError(f"--std must be positive and --mean finite, got mean {self.mean}, std {self.std}")
        check_choice("--resize-mode", self.mode, RESIZE_MODES)
        if self.interpolation not in {m.value for m in InterpolationMode}:
            raise AlexfeatError(f"unknown interpolation {self.interpolation!r}")

    def resize_for(self, crop: int) -> int:
        """The shorter side to resize to before cropping ``crop``: this preprocessing's resize/crop ratio."""
        return max(crop, round(crop * self.resize / self.crop))

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


def decode_image(path: Path | bytes, target: int, grayscale: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Read an image file (or its encoded bytes) as a uint8 tensor [C, H, W] (RGB, or one channel if grayscale).

    EXIF orientation is applied; palette, RGBA, CMYK and 16-bit images are converted.
    Large images are shrunk while they are decoded, keeping the shorter side >= ``target``:
    JPEGs by DCT scaling (``draft``), others by an integer box reduction right after loading,
    so that no full-size copy is made. Raises DecompressionBombError over ``max_pixels``,
    ValueError when even the shrunk decode would need more than ``DECODE_BUDGET`` bytes, and
    OSError/ValueError/RuntimeError (or PIL's errors) for files that are not decodable images;
    callers record the reason.
    """
    with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as im:
        width, height = im.size
        if width * height > max_pixels:
            raise Image.DecompressionBombError(
                f"{width}x{height} is {width * height / 1e6:.0f} megapixels, over the limit of "
                f"{max_pixels / 1e6:.0f} (raise it with --max-pixels for files you trust)")
        if im.format == "JPEG":
            if simplejpeg is not None and _fast_jpeg(im, target, grayscale):
                return _simplejpeg(path if isinstance(path, bytes) else Path(path).read_bytes())
            if decode_jpeg is not None and _fast_jpeg(im, target, grayscale):
                # libjpeg-turbo through torchvision decodes about 3x faster than PIL + convert.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    data = torch.frombuffer(bytearray(path), dtype=torch.uint8) if isinstance(path, bytes) \
                        else read_file(str(path))
                    return decode_jpeg(data, mode=ImageReadMode.RGB)
            im.draft("L" if grayscale else "RGB", (target, target))
        _check_budget(im)  # before getexif, which loads a whole PNG
        im.load()
        out_mode = "L" if grayscale else "RGB"
        if im.mode not in _REDUCIBLE_MODES:
            im = _to_8bit(im).convert(out_mode)
        factor = min(im.size) // target
        if factor >= 2:
            im = im.reduce(factor)
        ImageOps.exif_transpose(im, in_place=True)
        im = _to_8bit(im)
        if im.mode != out_mode:
            im = im.convert(out_mode)
        array = np.array(im, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _simplejpeg(data: bytes) -> torch.Tensor:
    try:
        array = simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ValueError as exc:
        if "premature end" in str(exc).lower():  # worded as PIL and torchvision word it
            raise OSError("image file is truncated (premature end of JPEG data)") from None
        raise
    return torch.from_numpy(array).permute(2, 0, 1)  # [C, H, W] over the HWC array: channels-last


def _check_budget(im: Image.Image) -> None:
    """Refuse what cannot be decoded in bounded memory: PIL holds the whole raster while it loads."""
    pixels = im.size[0] * im.size[1]
    needed = pixels * _PIXEL_BYTES.get(im.mode, 4)
    if im.mode not in _REDUCIBLE_MODES:
        needed += pixels * 4  # converted at full size before it can be reduced
    if needed > DECODE_BUDGET:
        raise ValueError(f"a {im.size[0]}x{im.size[1]} {im.format} {im.mode} image needs {needed / 1e6:.0f} MB to "
                         f"decode, over the {DECODE_BUDGET / 1e6:.0f} MB one image may use (JPEGs are decoded at "
                         f"reduced size; other formats cannot be)")


def _fast_jpeg(im: Image.Image, target: int, grayscale: bool) -> bool:
    return (
        im.mode in ("RGB", "L")
        and not grayscale
        and min(im.size) < 2 * target
        and im.getexif().get(_EXIF_ORIENTATION, 1) == 1
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
    leaving room for a random crop later. In mode "crop", only the centre of an image with
    an aspect ratio over 4:1 is kept (a 4:1 part), which bounds the resized image's memory.
    """
    interpolation = InterpolationMode(pre.interpolation)
    if pre.mode == "crop":
        image = _centre_part(image, _MAX_ASPECT)
    if pre.mode == "pad":
        h, w = image.shape[-2:]
        scale = pre.crop / max(h, w)
        size = [max(1, round(h * scale)), max(1, round(w * scale))]
        image = TF.resize(image, size, interpolation=interpolation, antialias=True)
        dh, dw = pre.crop - image.shape[-2], pre.crop - image.shape[-1]
        return TF.pad(image, [dw // 2, dh // 2, dw - dw // 2, dh - dh // 2])
    image = TF.resize(image, [pre.resize], interpolation=interpolation, antialias=True)
    return TF.center_crop(image, [pre.crop, pre.crop]) if crop else image


def _centre_part(image: torch.Tensor, aspect: int) -> torch.Tensor:
    """The centre of an image longer than ``aspect`` times its width: resizing a 100000x10 strip's
    shorter side to 256 would otherwise take gigabytes, though the crop keeps only its centre."""
    h, w = image.shape[-2:]
    keep = aspect * min(h, w)
    if max(h, w) <= keep:
        return image
    if w > h:
        return image[..., :, (w - keep) // 2:(w - keep) // 2 + keep]
    return image[..., (h - keep) // 2:(h - keep) // 2 + keep, :]


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
                 crop: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.files = list(files)
        self.pre = pre
        self.crop = crop
        self.max_pixels = max_pixels
        self.indices = list(range(len(self.files))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        index = self.indices[i]
        try:
            item = self.files[index]
            data = item if isinstance(item, (str, os.PathLike)) else item.read()
            image = decode_image(data, self.pre.decode_size, self.pre.grayscale, self.max_pixels)
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
    images = stack_images([img for _, img in good]) if good else torch.empty(0, dtype=torch.uint8)
    return DecodedBatch([i for i, _ in good], images, failures)


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """Same-size uint8 images [C, H, W] as one batch [B, C, H, W] in channels-last memory.

    The network runs channels-last and libjpeg-turbo's JPEGs come channels-last, so those are never
    transposed (PIL-decoded images are, once, here in the worker). In a DataLoader worker the batch
    is made in shared memory, so handing it to the main process copies nothing (as the default
    collate does).
    """
    if len({image.shape for image in images}) > 1:
        raise ValueError(f"images of different sizes cannot be stacked: {sorted({tuple(i.shape) for i in images})}")
    c, h, w = images[0].shape
    shape, strides = (len(images), c, h, w), (c * h * w, 1, w * c, c)
    out = torch.empty(0, dtype=images[0].dtype)
    if get_worker_info() is not None:
        out.set_(torch.UntypedStorage._new_shared(math.prod(shape) * out.element_size()), 0, shape, strides)
    else:
        out = torch.empty_strided(shape, strides, dtype=images[0].dtype)
    for row, image in zip(out, images):
        row.copy_(image)
    return out


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
