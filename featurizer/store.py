"""The HDF5 feature store: the only module that reads or writes its layout.

Layout::

    /features/<layer>   float32|float16 [N, D], chunked by rows
    /labels             int64 [N], -1 where unlabeled
    /paths              utf-8 [N], relative to the images source
    /skipped/paths      utf-8 [S]; /skipped/reasons utf-8 [S]
    attrs: classes, model, weights, layers, preprocess (JSON), pooling (JSON: per layer "avg",
           "max", "flatten" or "none"), alexfeat_version,
           created, complete, plus any other provenance given at creation

Crash safety: every feature dataset is allocated in full when the store is created
(the number of input images is known), so writing a batch changes raw data only,
never HDF5 metadata; a kill -9 cannot leave the file unreadable. Progress is kept
in a JSON sidecar written atomically after each flush (see ``Progress``); rows
written after it are written again on resume. Compressed datasets (``lzf``,
``gzip``) allocate their chunks as they are written, so there the guarantee rests
on HDF5 writing its metadata at flushes only.
Paths, labels and the skip list are written once, when the store is finished.

A merged store either copies its parts' rows, or (``write_virtual_store``) maps each
``/features/<layer>`` onto the parts' datasets with an HDF5 virtual dataset, by paths
relative to the merged file. ``FeatureStore.open`` also opens a folder of parts (see
``partstore``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from alexfeat.featurizer.atomic import atomic_write_text
from alexfeat.featurizer.choices import COMPRESSIONS, check_choice
from alexfeat.featurizer.errors import AlexfeatError

__all__ = ["FeatureStore", "PartialStore", "StoreWriter", "Progress", "partial_path", "progress_path", "lock_path",
           "write_virtual_store"]

_STR = h5py.string_dtype("utf-8")
# Uncompressed chunks larger than the 1 MB chunk cache are written straight to their place in the
# file (bench/featurize.py measures the write stage alone).
_CHUNK_BYTES = 4 << 20
# A compressed chunk is compressed once, when complete, only if every layer's chunk fits the cache.
_COMPRESSED_CACHE_BYTES = 64 << 20


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.json")


def lock_path(out: Path) -> Path:
    """The lock file held by the one run writing ``out`` (see ``featurizer.lock.RunLock``)."""
    return out.with_name(out.name + ".lock")


@dataclass
class Progress:
    """How far a store's writing got: inputs consumed, rows written, skips so far."""

    fingerprint: str
    next_index: int = 0
    rows: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps({"fingerprint": self.fingerprint, "next_index": self.next_index,
                                             "rows": self.rows, "skipped": self.skipped}))

    @classmethod
    def load(cls, path: Path) -> "Progress":
        d = json.loads(path.read_text())
        return cls(d["fingerprint"], d["next_index"], d["rows"], [tuple(s) for s in d["skipped"]])


class StoreWriter:
    """Writes rows into a pre-allocated store at ``OUT.partial``; ``finish`` renames it to OUT."""

    def __init__(self, out: Path, h5: h5py.File):
        self.out = out
        self.h5 = h5
        self._datasets = dict(h5["features"].items()) if "features" in h5 else {}

    @classmethod
    def create(cls, out: Path, n_rows: int, dims: dict[str, int], dtype: str, attrs: dict[str, Any],
               compression: str = "none") -> "StoreWriter":
        """Create ``OUT.partial`` with every feature dataset allocated for ``n_rows`` rows."""
        check_choice("--compression", compression, COMPRESSIONS)
        compressed = compression != "none"
        h5 = _open_for_writing(partial_path(out), "w", compressed)
        for layer, dim in dims.items():
            itemsize = np.dtype(dtype).itemsize
            chunk_rows = max(1, min(n_rows, _CHUNK_BYTES // (dim * itemsize)))
            options: dict[str, Any] = {"compression": compression} if compressed else {}
            if not compressed:
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                options["dcpl"] = dcpl
            h5.create_dataset(f"features/{layer}", shape=(n_rows, dim), maxshape=(None, dim), dtype=dtype,
                              chunks=(chunk_rows, dim), track_times=False, **options)
        for key, value in attrs.items():
            h5.attrs[key] = value
        h5.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        h5.attrs["complete"] = False
        h5.flush()
        return cls(out, h5)

    @classmethod
    def reopen(cls, out: Path) -> "StoreWriter":
        try:
            with h5py.File(partial_path(out), "r") as h5:
                compressed = any(ds.compression for ds in h5["features"].values())
            return cls(out, _open_for_writing(partial_path(out), "r+", compressed))
        except (OSError, KeyError) as exc:
            raise AlexfeatError(f"cannot resume: {partial_path(out)} is unreadable ({exc}); "
                                f"start again with --overwrite") from None

    @property
    def attrs(self) -> h5py.AttributeManager:
        return self.h5.attrs

    def write_rows(self, start: int, features: dict[str, np.ndarray]) -> None:
        for layer, rows in features.items():
            self._datasets[layer][start:start + len(rows)] = rows

    def flush(self) -> None:
        """Make the written rows durable (the progress file saved next vouches for them)."""
        self.h5.flush()
        os.fsync(self.h5.id.get_vfd_handle())

    def finish(self, rows: int, paths: list[str], labels: list[int], skipped: list[tuple[str, str]]) -> None:
        """Trim to ``rows``, write paths/labels/skips, mark complete, and rename to OUT."""
        h5 = self.h5
        for ds in h5["features"].values():
            if ds.shape[0] != rows:
                ds.resize(rows, axis=0)
        for name in ("paths", "labels", "skipped"):
            if name in h5:  # a finish interrupted earlier; redo it
                del h5[name]
        h5.create_dataset("paths", data=np.array(paths, dtype=object), dtype=_STR)
        h5.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        h5.create_dataset("skipped/paths", data=np.array([p for p, _ in skipped], dtype=object), dtype=_STR)
        h5.create_dataset("skipped/reasons", data=np.array([r for _, r in skipped], dtype=object), dtype=_STR)
        h5.attrs["complete"] = True
        h5.close()
        os.replace(partial_path(self.out), self.out)

    def close(self) -> None:
        if self.h5.id.valid:
            self.h5.close()


def write_virtual_store(out: Path, parts: list[tuple[Path, int]], dims: dict[str, int], dtype: str,
                        attrs: dict[str, Any], paths: list[str], labels: list[int],
                        skipped: list[tuple[str, str]]) -> None:
    """A store whose features are virtual datasets over ``parts`` ([(part file, rows)], in order).

    Sources are recorded relative to ``out``'s folder, so the folder can move as a whole.
    """
    out = Path(out)
    rows = sum(n for _, n in parts)
    h5 = h5py.File(partial_path(out), "w")
    try:
        for layer, dim in dims.items():
            layout = h5py.VirtualLayout(shape=(rows, dim), dtype=dtype)
            start = 0
            for part, n in parts:
                relative = os.path.relpath(Path(part).resolve(), out.resolve().parent)
                layout[start:start + n] = h5py.VirtualSource(relative, f"features/{layer}", shape=(n, dim))
                start += n
            h5.create_virtual_dataset(f"features/{layer}", layout, fillvalue=np.nan)
        for key, value in attrs.items():
            h5.attrs[key] = value
        h5.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        h5.attrs["complete"] = False
    finally:
        h5.close()
    StoreWriter(out, h5py.File(partial_path(out), "r+")).finish(rows, paths, labels, skipped)


def _open_for_writing(path: Path, mode: str, compressed: bool) -> h5py.File:
    return h5py.File(path, mode, rdcc_nbytes=_COMPRESSED_CACHE_BYTES) if compressed else h5py.File(path, mode)


def _decoded(attrs: h5py.AttributeManager) -> dict[str, Any]:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, np.generic):
            value = value.item()
        if key in ("classes", "layers", "preprocess", "options", "pooling"):
            value = json.loads(value)
        out[key] = value
    return out


@dataclass(frozen=True)
class PartialStore:
    """An unfinished store: ``inputs`` images to go through, ``progress`` (None before the first batch)."""

    out: Path
    inputs: int
    dims: dict[str, int]
    attrs: dict[str, Any]
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
            from alexfeat.featurizer.partstore import PartsStore

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
        return list(json.loads(self._h5.attrs["layers"]))

    @property
    def classes(self) -> list[str]:
        return list(json.loads(self._h5.attrs["classes"]))

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

    @property
    def raw_attrs(self) -> dict[str, Any]:
        """Every root attribute as stored (JSON ones still encoded): what a merged store copies."""
        return {key: value.item() if isinstance(value, np.generic) else value for key, value in self._h5.attrs.items()}

    @property
    def attrs(self) -> dict[str, Any]:
        """Provenance: every root attribute, JSON-encoded ones decoded."""
        return _decoded(self._h5.attrs)

    @staticmethod
    def read_partial(out: Path | str) -> "PartialStore":
        """What an unfinished run has written to ``OUT.partial`` (read-only, also while a run writes it)."""
        out = Path(out)
        try:
            # A running featurize holds the file open for writing; HDF5's own file lock would refuse us.
            with h5py.File(partial_path(out), "r", locking=False) as h5:
                attrs = _decoded(h5.attrs)
                dims = {layer: int(ds.shape[1]) for layer, ds in h5["features"].items()}
                inputs = max((int(ds.shape[0]) for ds in h5["features"].values()), default=0)
        except (OSError, KeyError):
            raise AlexfeatError(f"{partial_path(out)} is not a readable partial feature store") from None
        progress = Progress.load(progress_path(out)) if progress_path(out).exists() else None
        return PartialStore(out, inputs, dims, attrs, progress)

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
