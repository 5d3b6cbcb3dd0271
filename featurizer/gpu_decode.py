"""JPEGs decoded on the network's device: workers read the bytes, nvJPEG decodes a batch at once.

Whatever nvJPEG is not given (other formats, CMYK, progressive and very large JPEGs) or refuses is
decoded by the CPU path (``decode.ImageDataset``) in the same batch, so every image gets the
preprocessing and the skip reasons the CPU path would give it. EXIF orientation is read in the
worker and applied to the decoded tensor with the same flips and turns PIL's ``exif_transpose`` does.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import torch
from PIL import Image

from alexfeat.featurizer.decode import DecodedBatch, ImageDataset, Preprocess, resize_image

__all__ = ["EncodedDataset", "EncodedBatch", "collate_encoded", "decode_on_device", "apply_orientation",
           "device_decodable"]

_EXIF_ORIENTATION = 0x0112
# Larger JPEGs go to the CPU path, which decodes them at reduced size (and applies its pixel limits);
# 64 decoded 36-megapixel images already take 7 GB of GPU memory.
_MAX_DEVICE_PIXELS = 36_000_000


@dataclass(frozen=True)
class Jpeg:
    """A JPEG file's bytes (uint8 [n]) and its EXIF orientation (1-8), for nvJPEG."""

    data: torch.Tensor
    orientation: int


@dataclass
class EncodedBatch:
    """``items[k]`` belongs to ``indices[k]``: a Jpeg to decode, or an image the CPU path already made."""

    indices: list[int]
    items: list[Union[Jpeg, torch.Tensor]]
    failures: list[tuple[int, str]] = field(default_factory=list)


def device_decodable(data: bytes, max_pixels: int = _MAX_DEVICE_PIXELS) -> int | None:
    """The EXIF orientation of a JPEG nvJPEG can decode (baseline, RGB or grayscale, at most
    ``max_pixels``), else None."""
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if (im.format != "JPEG" or im.mode not in ("RGB", "L") or "progressive" in im.info
                        or "progression" in im.info or im.width * im.height > max_pixels):
                    return None
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # whatever PIL cannot read, the CPU path reads again and gives its reason
        return None
    return orientation if orientation in range(1, 9) else 1


class EncodedDataset(ImageDataset):
    """Files (or tar members) -> (index, Jpeg or uint8 image [C, crop, crop] or None, failure reason or None)."""

    def __getitem__(self, i: int) -> tuple[int, Union[Jpeg, torch.Tensor, None], str | None]:
        index = self.indices[i]
        item = self.files[index]
        try:
            data = Path(item).read_bytes() if isinstance(item, (str, os.PathLike)) else item.read()
        except OSError:
            return super().__getitem__(i)  # the CPU path words the reason
        # Over --max-pixels, the CPU path refuses the image with its usual reason.
        orientation = device_decodable(data, min(_MAX_DEVICE_PIXELS, self.max_pixels))
        if orientation is None:
            return super().__getitem__(i)
        return index, Jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), orientation), None


def collate_encoded(items: list[tuple[int, Union[Jpeg, torch.Tensor, None], str | None]]) -> EncodedBatch:
    good = [(i, item) for i, item, _ in items if item is not None]
    failures = [(i, reason) for i, item, reason in items if item is None]
    return EncodedBatch([i for i, _ in good], [item for _, item in good], failures)


def apply_orientation(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn a [C, H, W] tensor upright as EXIF ``orientation`` says (what PIL's exif_transpose does)."""
    h, w = -2, -1
    if orientation == 2:
        return image.flip(w)
    if orientation == 3:
        return image.flip(h, w)
    if orientation == 4:
        return image.flip(h)
    if orientation == 5:
        return image.transpose(h, w)
    if orientation == 6:
        return image.rot90(-1, (h, w))
    if orientation == 7:
        return image.transpose(h, w).flip(h, w)
    if orientation == 8:
        return image.rot90(1, (h, w))
    return image


def decode_on_device(batch: EncodedBatch, files: Sequence, pre: Preprocess,
                     device: torch.device) -> DecodedBatch:
    """Decode a batch's JPEGs on ``device`` in one call, resize and crop them there, and stack them with
    the images the workers decoded; a JPEG the decoder refuses is decoded by the CPU path instead."""
    jpegs = [item for item in batch.items if isinstance(item, Jpeg)]
    decoded = iter(_decode_jpegs([j.data for j in jpegs], pre.grayscale, device)) if jpegs else iter(())
    indices, images, failures = [], [], list(batch.failures)
    for index, item in zip(batch.indices, batch.items):
        if isinstance(item, Jpeg):
            raw = next(decoded)
            if raw is None:
                _, image, reason = ImageDataset([files[index]], pre)[0]
                if image is None:
                    failures.append((index, reason))
                    continue
                image = image.to(device)
            else:
                image = resize_image(apply_orientation(raw, item.orientation), pre)
        else:
            image = item.to(device, non_blocking=True)
        indices.append(index)
        images.append(image)
    stacked = torch.stack(images) if images else torch.empty(0, dtype=torch.uint8, device=device)
    return DecodedBatch(indices, stacked, sorted(failures))


def _decode_jpegs(data: list[torch.Tensor], grayscale: bool, device: torch.device) -> list[torch.Tensor | None]:
    """Decode in one call; if the batch fails, one at a time, None for each JPEG that fails alone."""
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if grayscale else ImageReadMode.RGB
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
        try:
            return list(decode_jpeg(data, mode=mode, device=device))
        except RuntimeError:
            out: list[torch.Tensor | None] = []
            for one in data:
                try:
                    out.append(decode_jpeg(one, mode=mode, device=device))
                except RuntimeError:
                    out.append(None)
            return out
