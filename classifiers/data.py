"""Read labelled feature matrices out of a store, in row chunks, into one array."""

from __future__ import annotations

import numpy as np

from alexfeat.errors import AlexfeatError
from alexfeat.store.reader import FeatureStore

__all__ = ["read_features", "choose_layer", "labelled_rows"]


def choose_layer(store: FeatureStore, layer: str | None) -> str:
    """``layer`` if given (and present), else the store's only layer."""
    if layer is None:
        if len(store.layers) != 1:
            raise AlexfeatError(f"{store.path} has layers {', '.join(store.layers)}: choose one with --layer")
        return store.layers[0]
    if layer not in store.layers:
        raise AlexfeatError(f"{store.path} has no layer {layer!r}; it has {', '.join(store.layers)}")
    return layer


def labelled_rows(store: FeatureStore, purpose: str) -> np.ndarray:
    """Labels of a store whose every row is labelled; AlexfeatError otherwise."""
    labels = store.labels
    if not store.classes or (labels < 0).all():
        raise AlexfeatError(f"{store.path} has no labels, so it cannot be used to {purpose}; "
                            f"featurize a folder of class sub-folders or a list with a label column")
    if (labels < 0).any():
        raise AlexfeatError(f"{store.path} has {(labels < 0).sum()} unlabelled rows; it cannot be used to {purpose}")
    return labels


def read_features(store: FeatureStore, layer: str, rows: np.ndarray | None = None, chunk: int = 4096) -> np.ndarray:
    """The ``layer`` features of ``rows`` (all rows when None) as one float32 [n, D] array.

    Rows are read in chunks straight into the result, so a float16 store is never
    held twice and a large one is never copied as a whole.
    """
    n = len(store) if rows is None else len(rows)
    out = np.empty((n, store.dim(layer)), dtype=np.float32)
    if rows is None:
        start = 0
        for block in store.iter_rows(layer, chunk):
            out[start:start + len(block)] = block
            start += len(block)
        return out
    for start in range(0, n, chunk):
        out[start:start + chunk] = store.features(layer, rows[start:start + chunk])
    return out
