"""Writing the HDF5 feature store: the only module that creates or fills one (layout: ``store.reader``).

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
relative to the merged file.

A full or read-only disk met by any write here (creating, a batch, a flush, finishing) is a
``CannotWrite`` naming the file; a store is refused before it is created when the disk
cannot hold it. A store whose creation failed is removed; what to do with one that failed later is the
caller's choice (featurize keeps it to resume, merge removes it).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from alexfeat.atomic import atomic_write_text
from alexfeat.choices import COMPRESSIONS, check_choice
from alexfeat.errors import AlexfeatError
from alexfeat.output import CannotWrite, cannot_write, check_free_space, write_error
from alexfeat.store.markers import write_marker
from alexfeat.store.paths import partial_path
from alexfeat.store.provenance import Provenance

__all__ = ["StoreWriter", "Progress", "write_virtual_store", "write_part"]

_STR = h5py.string_dtype("utf-8")
# Uncompressed chunks larger than the 1 MB chunk cache are written straight to their place in the
# file (bench/featurize.py measures the write stage alone).
_CHUNK_BYTES = 4 << 20
# A compressed chunk is compressed once, when complete, only if every layer's chunk fits the cache.
_COMPRESSED_CACHE_BYTES = 64 << 20


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
    def create(cls, out: Path, n_rows: int, dims: dict[str, int], dtype: str, provenance: Provenance,
               compression: str = "none") -> "StoreWriter":
        """Create ``OUT.partial`` with every feature dataset allocated for ``n_rows`` rows."""
        check_choice("--compression", compression, COMPRESSIONS)
        compressed = compression != "none"
        itemsize = np.dtype(dtype).itemsize
        path = partial_path(out)
        # A compressed store's size is known only once written, and HDF5 cannot close one cleanly on a full
        # disk (it crashes the process): its uncompressed size is the bound it must fit in.
        check_free_space(path, n_rows * sum(dims.values()) * itemsize,
                         " (uncompressed: the bound for --compression)" if compressed else "")
        h5 = None
        try:
            with _writing(path):
                h5 = _open_for_writing(path, "w", compressed)
                for layer, dim in dims.items():
                    chunk_rows = max(1, min(n_rows, _CHUNK_BYTES // (dim * itemsize)))
                    options: dict[str, Any] = {"compression": compression} if compressed else {}
                    if not compressed:
                        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                        options["dcpl"] = dcpl
                    h5.create_dataset(f"features/{layer}", shape=(n_rows, dim), maxshape=(None, dim), dtype=dtype,
                                      chunks=(chunk_rows, dim), track_times=False, **options)
                _write_provenance(h5, provenance)
                h5.flush()
        except BaseException:
            if h5 is not None:
                _close_quietly(h5)
            path.unlink(missing_ok=True)  # nothing in it yet to resume
            raise
        return cls(out, h5)

    @classmethod
    def reopen(cls, out: Path) -> "StoreWriter":
        try:
            with h5py.File(partial_path(out), "r") as h5:
                compressed = any(ds.compression for ds in h5["features"].values())
            return cls(out, _open_for_writing(partial_path(out), "r+", compressed))
        except (OSError, KeyError) as exc:
            if write_error(exc) is not None:  # a read-only disk: the store is fine, its place is not
                raise cannot_write(partial_path(out), exc) from None
            raise AlexfeatError(f"cannot resume: {partial_path(out)} is unreadable ({exc}); "
                                f"start again with --overwrite") from None

    @property
    def attrs(self) -> h5py.AttributeManager:
        return self.h5.attrs

    def write_rows(self, start: int, features: dict[str, np.ndarray]) -> None:
        with _writing(partial_path(self.out)):
            for layer, rows in features.items():
                self._datasets[layer][start:start + len(rows)] = rows

    def flush(self) -> None:
        """Make the written rows durable (the progress file saved next vouches for them)."""
        with _writing(partial_path(self.out)):
            self.h5.flush()
            os.fsync(self.h5.id.get_vfd_handle())

    def finish(self, rows: int, paths: list[str], labels: list[int], skipped: list[tuple[str, str]]) -> None:
        """Trim to ``rows``, write paths/labels/skips, mark complete, and rename to OUT."""
        h5 = self.h5
        with _writing(partial_path(self.out)):
            for ds in h5["features"].values():
                if ds.shape[0] != rows:
                    ds.resize(rows, axis=0)
            for name in ("paths", "labels", "skipped"):
                if name in h5:  # a finish interrupted earlier; redo it
                    del h5[name]
            h5.create_dataset("paths", data=np.array(paths, dtype=object), dtype=_STR)
            h5.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
            h5.create_dataset("skipped/paths", data=np.array([p for p, _ in skipped], dtype=object), dtype=_STR)
            h5.create_dataset("skipped/reasons", data=np.array([r for _, r in skipped], dtype=object),
                              dtype=_STR)
            h5.attrs["complete"] = True
            h5.close()
        with _writing(self.out):
            os.replace(partial_path(self.out), self.out)

    def close(self) -> None:
        """Close the file; after a failed write, closing (which flushes) may fail too: that is not raised
        over the first error."""
        if self.h5.id.valid:
            _close_quietly(self.h5)

    def discard(self) -> None:
        """Close and remove ``OUT.partial`` (a failed merge or whole part leaves nothing)."""
        self.close()
        partial_path(self.out).unlink(missing_ok=True)


def write_virtual_store(out: Path, parts: list[tuple[Path, int]], dims: dict[str, int], dtype: str,
                        provenance: Provenance, paths: list[str], labels: list[int],
                        skipped: list[tuple[str, str]]) -> None:
    """A store whose features are virtual datasets over ``parts`` ([(part file, rows)], in order).

    Sources are recorded relative to ``out``'s folder, so the folder can move as a whole.
    """
    out = Path(out)
    rows = sum(n for _, n in parts)
    path = partial_path(out)
    try:
        with _writing(path):
            with h5py.File(path, "w") as h5:
                for layer, dim in dims.items():
                    layout = h5py.VirtualLayout(shape=(rows, dim), dtype=dtype)
                    start = 0
                    for part, n in parts:
                        relative = os.path.relpath(Path(part).resolve(), out.resolve().parent)
                        layout[start:start + n] = h5py.VirtualSource(relative, f"features/{layer}", shape=(n, dim))
                        start += n
                    h5.create_virtual_dataset(f"features/{layer}", layout, fillvalue=np.nan)
                _write_provenance(h5, provenance)
            writer = StoreWriter(out, h5py.File(path, "r+"))
        try:
            writer.finish(rows, paths, labels, skipped)
        finally:
            writer.close()
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def write_part(part: Path, features: dict[str, np.ndarray], keys: list[str], labels: list[int],
               skipped: list[tuple[str, str]], provenance: Provenance, stats: dict[str, Any]) -> None:
    """Write a whole part from arrays (the Ray engine's blocks), then its marker."""
    dims = {layer: rows.shape[1] for layer, rows in features.items()}
    dtype = str(next(iter(features.values())).dtype)
    partial_path(part).unlink(missing_ok=True)
    writer = StoreWriter.create(part, len(keys), dims, dtype, provenance)
    try:
        if keys:
            writer.write_rows(0, features)
        writer.finish(len(keys), keys, labels, skipped)
    except BaseException:
        writer.discard()
        raise
    write_marker(part, {**stats, "rows": len(keys), "skipped": len(skipped)})


def _write_provenance(h5: h5py.File, provenance: Provenance) -> None:
    """A new store's attributes: its provenance, when it was created, and not complete yet."""
    for key, value in provenance.to_attrs().items():
        h5.attrs[key] = value
    h5.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    h5.attrs["complete"] = False


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A full or read-only disk under ``path``, however h5py words it, as one ``CannotWrite``."""
    try:
        yield
    except CannotWrite:
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        error = cannot_write(path, exc)
        if error is exc:
            raise
        raise error from None


def _close_quietly(h5: h5py.File) -> None:
    try:
        h5.close()
    except (OSError, ValueError, RuntimeError):
        pass  # a full disk failing the close's flush: the write before it has said so


def _open_for_writing(path: Path, mode: str, compressed: bool) -> h5py.File:
    return h5py.File(path, mode, rdcc_nbytes=_COMPRESSED_CACHE_BYTES) if compressed else h5py.File(path, mode)
