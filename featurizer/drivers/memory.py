"""Featurize a list of images into arrays in memory (what predict on images uses)."""

from __future__ import annotations

import numpy as np

from alexfeat.featurizer.decode import ImageDataset, make_loader
from alexfeat.featurizer.device import default_workers
from alexfeat.featurizer.sources import SampleList
from alexfeat.featurizer.sources.folders import DEFAULT_MAX_PIXELS
from alexfeat.featurizer.featurizer import Featurizer
from alexfeat.progress import progress_bar

__all__ = ["extract_features", "computed_batches"]


def computed_batches(fz: Featurizer, batches, dtype: str):
    """Yield (batch, {layer: [B, D] array in ``dtype``}) for each decoded batch."""
    for batch in batches:
        feats = fz(batch.images) if batch.indices else {}
        yield batch, {k: v.astype(dtype, copy=False) for k, v in feats.items()}


def extract_features(fz: Featurizer, images: SampleList, dtype: str = "float32", batch_size: int = 64,
                     workers: int | None = None, quiet: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
                     ) -> tuple[list[int], dict[str, np.ndarray], list[tuple[int, str]]]:
    """Featurize ``images`` in memory: (indices of decoded images, {layer: [n, D]}, [(index, reason)])."""
    workers = default_workers(fz.device, precision=fz.precision) if workers is None else workers
    loader = make_loader(ImageDataset(images.files, fz.pre, max_pixels=max_pixels), batch_size, workers,
                         fz.device.type == "cuda")
    indices, parts, failures = [], {layer: [] for layer in fz.layers}, []
    with progress_bar(len(images), "featurize", not quiet) as advance:
        for batch, feats in computed_batches(fz, loader, dtype):
            indices += batch.indices
            failures += batch.failures
            for layer, values in feats.items():
                parts[layer].append(values)
            advance(len(batch.indices) + len(batch.failures))
    empty = {layer: np.empty((0, fz.dims[layer]), dtype=dtype) for layer in fz.layers}
    return indices, {k: np.concatenate(v) if v else empty[k] for k, v in parts.items()}, failures
