"""Read labelled feature matrices out of a store, in row chunks, into one array."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alexfeat.errors import AlexfeatError
from alexfeat.store.reader import FeatureStore

__all__ = ["read_features", "read_layers", "choose_layer", "choose_layers", "split_layers", "labelled_rows",
           "check_finite"]


def choose_layer(store: FeatureStore, layer: str | None) -> str:
    """``layer`` if given (and present), else the store's only layer."""
    if layer is None:
        if len(store.layers) != 1:
            raise AlexfeatError(f"{store.path} has layers {', '.join(store.layers)}: choose one with --layer")
        return store.layers[0]
    if layer not in store.layers:
        raise AlexfeatError(f"{store.path} has no layer {layer!r}; it has {', '.join(store.layers)}")
    return layer


def split_layers(spec: str) -> tuple[str, ...]:
    """The layers of ``a+b`` (or ``a,b``): features of several layers side by side, in that order."""
    layers = tuple(name.strip() for name in spec.replace(",", "+").split("+") if name.strip())
    if len(set(layers)) != len(layers):
        raise AlexfeatError(f"--layer {spec!r} names a layer twice")
    return layers


def choose_layers(store: FeatureStore, spec: str | None) -> tuple[str, ...]:
    """The layers ``spec`` (``a``, ``a+b`` or ``a,b``) names, each present; the store's only layer if None."""
    if spec is None:
        return (choose_layer(store, None),)
    layers = split_layers(spec)
    if not layers:
        raise AlexfeatError(f"--layer {spec!r} names no layer; the store has {', '.join(store.layers)}")
    return tuple(choose_layer(store, layer) for layer in layers)


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


def read_layers(store: FeatureStore, layers: tuple[str, ...], rows: np.ndarray | None = None) -> np.ndarray:
    """The features of ``layers`` side by side, in that order, as one float32 [n, sum of D] array."""
    if len(layers) == 1:
        return read_features(store, layers[0], rows)
    n = len(store) if rows is None else len(rows)
    out = np.empty((n, sum(store.dim(layer) for layer in layers)), dtype=np.float32)
    start = 0
    for layer in layers:
        block = read_features(store, layer, rows)  # one layer at a time: never two copies of the whole
        out[:, start:start + block.shape[1]] = block
        start += block.shape[1]
        del block
    return out


def check_finite(X: np.ndarray, path: Path, layer: str) -> np.ndarray:
    """``X``, or AlexfeatError when rows of ``layer`` (names joined by "+") are NaN or infinite."""
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        raise AlexfeatError(f"{path} layer {layer} has NaN or infinite features in {bad} rows; "
                            f"featurize again (float16 overflows on large activations: try --dtype float32)")
    return X
