"""Reading the HDF5 feature store: a store file, a merged or virtual store, or a folder of parts.

Layout (written by ``store.writer``)::

    /features/<layer>   float32|float16 [N, D], chunked by rows
    /labels             int64 [N], -1 where unlabeled
    /paths              utf-8 [N], relative to the images source
    /skipped/paths      utf-8 [S]; /skipped/reasons utf-8 [S]
    attrs: the provenance (``store.provenance.Provenance``), created, complete

``FeatureStore.open`` opens any of them; a folder of parts reads as one store (``PartsStore``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from alexfeat.errors import AlexfeatError
from alexfeat.store.markers import done_parts
from alexfeat.store.paths import partial_path, progress_path
from alexfeat.store.provenance import STORE_KEYS, Provenance
from alexfeat.store.writer import Progress

__all__ = ["FeatureStore", "PartsStore", "PartialStore"]

@dataclass(frozen=True)
class PartialStore:
    """An unfinished store: ``inputs`` images to go through, ``progress`` (None before the first batch)."""

    out: Path
    inputs: int
    dims: dict[str, int]
    provenance: Provenance
    progress: Progress | None

    @property
    def done(self) -> int:
        """Inputs gone through so far: rows written plus images skipped."""
        return self.progress.next_index if self.progress else 0


class FeatureStore:
    """Read access to a finished store: ``FeatureStore.open(path)``.

    ``features(layer)`` loads a layer as an [N, D] array; ``iter_rows`` reads it in
    row chunks for stores too large for memory.
    """

    def __init__(self, path: Path, h5: h5py.File):
        self.path = Path(path)
        self._h5 = h5

    @classmethod
    def open(cls, path: Path | str) -> "FeatureStore":
        """Open a store file, a merged or virtual store, or a folder of finished parts."""
        path = Path(path)
        if path.is_dir():
            return PartsStore.open(path)
        if not path.exists():
            hint = f" (an unfinished run left {partial_path(path).name}; finish it with --resume)" \
                if partial_path(path).exists() else ""
            raise AlexfeatError(f"feature store {path} does not exist{hint}")
        try:
            h5 = h5py.File(path, "r")
        except OSError:
            raise AlexfeatError(f"{path} is not a readable HDF5 file") from None
        if "features" not in h5 or "complete" not in h5.attrs:
            h5.close()
            raise AlexfeatError(f"{path} is an HDF5 file but not an alexfeat feature store")
        if not bool(h5.attrs["complete"]):
            h5.close()
            raise AlexfeatError(f"{path} is incomplete: its featurize run did not finish; rerun it with --resume")
        _check_virtual_sources(path, h5)
        return cls(path, h5)

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._h5["labels"].shape[0])

    @property
    def layers(self) -> list[str]:
        return list(self.provenance.layers)

    @property
    def classes(self) -> list[str]:
        return list(self.provenance.classes)

    @property
    def labels(self) -> np.ndarray:
        return self._h5["labels"][:]

    @property
    def paths(self) -> list[str]:
        return [p.decode() if isinstance(p, bytes) else p for p in self._h5["paths"][:]]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        paths = self._h5["skipped/paths"].asstr()[:]
        reasons = self._h5["skipped/reasons"].asstr()[:]
        return list(zip(paths, reasons))

    @cached_property
    def provenance(self) -> Provenance:
        return Provenance.from_attrs(self._h5.attrs)

    @property
    def attrs(self) -> dict[str, Any]:
        """The provenance as a plain dict (``Provenance.as_dict``), and whether the store is complete."""
        return {**self.provenance.as_dict(), "complete": bool(self._h5.attrs["complete"])}

    @staticmethod
    def read_partial(out: Path | str) -> "PartialStore":
        """What an unfinished run has written to ``OUT.partial`` (read-only, also while a run writes it)."""
        out = Path(out)
        try:
            # A running featurize holds the file open for writing; HDF5's own file lock would refuse us.
            with h5py.File(partial_path(out), "r", locking=False) as h5:
                provenance = Provenance.from_attrs(h5.attrs)
                dims = {layer: int(ds.shape[1]) for layer, ds in h5["features"].items()}
                inputs = max((int(ds.shape[0]) for ds in h5["features"].values()), default=0)
        except (OSError, KeyError):
            raise AlexfeatError(f"{partial_path(out)} is not a readable partial feature store") from None
        progress = Progress.load(progress_path(out)) if progress_path(out).exists() else None
        return PartialStore(out, inputs, dims, provenance, progress)

    def dim(self, layer: str) -> int:
        return int(self._dataset(layer).shape[1])

    def features(self, layer: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        ds = self._dataset(layer)
        if rows is None:
            return ds[:]
        if isinstance(rows, slice):
            return ds[rows]
        rows = np.asarray(rows)
        order = np.argsort(rows)  # h5py fancy indexing needs increasing indices
        out = np.empty((len(rows), ds.shape[1]), dtype=ds.dtype)
        out[order] = ds[rows[order]]
        return out

    def iter_rows(self, layer: str, chunk: int = 4096) -> Iterator[np.ndarray]:
        ds = self._dataset(layer)
        for start in range(0, ds.shape[0], chunk):
            yield ds[start:start + chunk]

    def _dataset(self, layer: str) -> h5py.Dataset:
        if layer not in self._h5["features"]:
            raise AlexfeatError(f"{self.path} has no layer {layer!r}; it has {', '.join(self.layers)}")
        return self._h5["features"][layer]


def _check_virtual_sources(path: Path, h5: h5py.File) -> None:
    """A virtual store whose part file is gone would read that part as NaN without a word: refuse."""
    for ds in h5["features"].values():
        if not ds.is_virtual:
            continue
        for source in {vs.file_name for vs in ds.virtual_sources()}:
            if not (path.parent / source).is_file():
                h5.close()
                raise AlexfeatError(f"{path} is a virtual store and its part {path.parent / source} is missing; "
                                    f"restore the parts folder next to it, or merge without --virtual")


class PartsStore:
    """A folder of finished parts, read like one ``FeatureStore`` (rows in part order)."""

    def __init__(self, path: Path, stores: list[FeatureStore]):
        self.path = Path(path)
        self._stores = stores
        self._starts = np.cumsum([0] + [len(s) for s in stores])

    @classmethod
    def open(cls, folder: Path | str) -> "PartsStore":
        parts = done_parts(Path(folder))
        stores: list[FeatureStore] = []
        try:
            for part in parts:
                stores.append(FeatureStore.open(part))
            _check_matching(Path(folder), stores)
        except AlexfeatError:
            for store in stores:
                store.close()
            raise
        return cls(Path(folder), stores)

    def close(self) -> None:
        for store in self._stores:
            store.close()

    def __enter__(self) -> "PartsStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def parts(self) -> list[FeatureStore]:
        return list(self._stores)

    @property
    def layers(self) -> list[str]:
        return self._stores[0].layers

    @property
    def classes(self) -> list[str]:
        return self._stores[0].classes

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate([s.labels for s in self._stores])

    @property
    def paths(self) -> list[str]:
        return [p for s in self._stores for p in s.paths]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [x for s in self._stores for x in s.skipped]

    @property
    def provenance(self) -> Provenance:
        return self._stores[0].provenance

    @property
    def attrs(self) -> dict[str, Any]:
        return {**self._stores[0].attrs, "parts": len(self._stores)}

    def dim(self, layer: str) -> int:
        return self._stores[0].dim(layer)

    def features(self, layer: str, rows: np.ndarray | slice | None = None) -> np.ndarray:
        if rows is None:
            rows = slice(0, len(self))
        if isinstance(rows, slice) and rows.step in (None, 1):
            start, stop, _ = rows.indices(len(self))
            blocks = [s.features(layer, slice(max(start - a, 0), max(min(stop - a, len(s)), 0)))
                      for s, a in zip(self._stores, self._starts)]
            return np.concatenate(blocks)
        if isinstance(rows, slice):
            rows = np.arange(len(self))[rows]
        rows = np.asarray(rows)
        out = np.empty((len(rows), self.dim(layer)), dtype=self._stores[0].features(layer, slice(0, 0)).dtype)
        which = np.searchsorted(self._starts, rows, side="right") - 1
        for k in np.unique(which):
            mask = which == k
            out[mask] = self._stores[k].features(layer, rows[mask] - self._starts[k])
        return out

    def iter_rows(self, layer: str, chunk: int = 4096) -> Iterator[np.ndarray]:
        for store in self._stores:
            yield from store.iter_rows(layer, chunk)


def _check_matching(folder: Path, stores: list[FeatureStore]) -> None:
    first = stores[0].provenance
    for store in stores[1:]:
        if (mismatch := first.mismatch(store.provenance, STORE_KEYS)) is not None:
            key, theirs, mine = mismatch
            raise AlexfeatError(f"{folder}: {store.path.name} was featurized with a different {key} than "
                                f"{stores[0].path.name} ({theirs!r} vs {mine!r}); "
                                f"parts of one store need the same settings")
