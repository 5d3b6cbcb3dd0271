"""A folder of part stores: naming, done markers, reading them as one store, and merging them.

Layout (img2dataset's shard convention)::

    DIR/part-SSSSS-KKKKK.h5          a finished FeatureStore (shard S, part K of that shard;
                                     the Ray engine names parts by their first input row instead)
    DIR/part-SSSSS-KKKKK.done.json   written last: the part's stats; its presence means "done"

A part without its marker is unfinished, whatever its state. Markers name their shard count and
how many parts their shard has, so a folder with a missing part is refused, not silently short.
Parts are read in name order, which is the input's order. No torch here: merge and the
classifiers use this module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from alexfeat.featurizer.atomic import atomic_write_text
from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.lock import RunLock
from alexfeat.featurizer.output import check_output
from alexfeat.featurizer.store import FeatureStore, StoreWriter, lock_path, partial_path, write_virtual_store

__all__ = ["part_name", "marker_path", "write_marker", "read_marker", "done_parts", "PartsStore", "merge_parts",
           "write_part", "MATCHING_ATTRS"]

MARKER_FORMAT = "alexfeat-part-v1"
# Parts may be merged only when all of these agree.
MATCHING_ATTRS = ("model", "weights", "preprocess", "layers", "classes", "options")
_PART = re.compile(r"part-(\d+)-(\d+)\.h5")


def part_name(shard: int, index: int) -> str:
    return f"part-{shard:05d}-{index:05d}.h5"


def marker_path(part: Path) -> Path:
    return part.with_name(part.name.removesuffix(".h5") + ".done.json")


def write_marker(part: Path, stats: dict[str, Any]) -> None:
    """Mark ``part`` done: called only after the part store itself is complete."""
    atomic_write_text(marker_path(part), json.dumps({"format": MARKER_FORMAT, **stats}, indent=1))


def read_marker(part: Path) -> dict[str, Any] | None:
    path = marker_path(part)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return None  # a torn marker cannot happen with atomic writes; treat a hand-edited one as absent
    return data if data.get("format") == MARKER_FORMAT else None


def done_parts(folder: Path) -> list[Path]:
    """The finished parts of ``folder`` in order; AlexfeatError for unfinished or missing ones."""
    folder = Path(folder)
    names = sorted({p.name.removesuffix(".partial") for p in folder.glob("part-*.h5*")
                    if _PART.fullmatch(p.name.removesuffix(".partial"))})
    if not names:
        raise AlexfeatError(f"{folder} holds no part stores (part-*.h5); featurize with --parts {folder} first")
    parts = [folder / n for n in names]
    unfinished = [p.name for p in parts if read_marker(p) is None]
    if unfinished:
        more = f" (and {len(unfinished) - 1} more)" if len(unfinished) > 1 else ""
        raise AlexfeatError(f"{folder}: part {unfinished[0]}{more} is not done; rerun the featurize command "
                            f"that writes it (it resumes)")
    markers = [read_marker(p) for p in parts]
    shard_counts = {m["shards"] for m in markers}
    if len(shard_counts) > 1:
        raise AlexfeatError(f"{folder} mixes parts of runs split into {sorted(shard_counts)} shards; "
                            f"keep one run's parts per folder")
    shards = shard_counts.pop()
    missing = [f"shard {s}" for s in range(shards) if s not in {m["shard"] for m in markers}]
    planned = [m for m in markers if "indices" not in m]
    have = {(m["shard"], m["index"]) for m in planned}
    expected = {m["shard"]: m["parts"] for m in planned}
    missing += [part_name(s, k) for s, n in expected.items() for k in range(n) if (s, k) not in have]
    # The Ray engine's parts are not planned ahead: each lists its input rows instead.
    covered: dict[int, int] = {}
    for m in markers:
        if "indices" in m:
            covered[m["shard"]] = covered.get(m["shard"], 0) + len(m["indices"])
    for m in markers:
        if "indices" in m and m["shard"] in covered:
            got = covered.pop(m["shard"])  # once per shard
            if got != m["images"]:
                missing.append(f"{m['images'] - got} rows of shard {m['shard']}")
    if missing:
        raise AlexfeatError(f"{folder} is missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} "
                            f"of {shards} shard(s); run the featurize command for it")
    return parts


def write_part(part: Path, features: dict[str, np.ndarray], keys: list[str], labels: list[int],
               skipped: list[tuple[str, str]], attrs: dict[str, Any], stats: dict[str, Any]) -> None:
    """Write a whole part from arrays (the Ray engine's blocks), then its marker."""
    dims = {layer: rows.shape[1] for layer, rows in features.items()}
    dtype = str(next(iter(features.values())).dtype)
    partial_path(part).unlink(missing_ok=True)
    writer = StoreWriter.create(part, len(keys), dims, dtype, attrs)
    try:
        if keys:
            writer.write_rows(0, features)
        writer.finish(len(keys), keys, labels, skipped)
    finally:
        writer.close()
    write_marker(part, {**stats, "rows": len(keys), "skipped": len(skipped)})


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
    def attrs(self) -> dict[str, Any]:
        return {**self._stores[0].attrs, "parts": len(self._stores)}

    @property
    def raw_attrs(self) -> dict[str, Any]:
        return self._stores[0].raw_attrs

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
    first = stores[0].attrs
    for store in stores[1:]:
        attrs = store.attrs
        for key in MATCHING_ATTRS:
            if attrs.get(key) != first.get(key):
                raise AlexfeatError(f"{folder}: {store.path.name} was featurized with a different {key} than "
                                    f"{stores[0].path.name} ({attrs.get(key)!r} vs {first.get(key)!r}); "
                                    f"parts of one store need the same settings")


def merge_parts(folder: Path, out: Path, virtual: bool = False, overwrite: bool = False,
                chunk: int = 4096) -> tuple[int, int]:
    """One store ``out`` from the finished parts in ``folder``; returns (rows, parts).

    ``virtual``: ``out`` maps onto the part files instead of copying them (see the README's caveats).
    """
    folder, out = Path(folder), Path(out)
    check_output(out, overwrite=overwrite, inputs=sorted(folder.glob("*.h5")))
    with RunLock(lock_path(out), f"the store {out}"), PartsStore.open(folder) as parts:
        attrs = {k: v for k, v in parts.raw_attrs.items() if k not in ("created", "complete", "part")}
        attrs["merged_from"] = str(folder.resolve())
        attrs["merged_parts"] = len(parts.parts)
        dims = {layer: parts.dim(layer) for layer in parts.layers}
        dtype = json.loads(attrs["options"])["dtype"]
        paths, labels, skipped = parts.paths, parts.labels.tolist(), parts.skipped
        if virtual:
            write_virtual_store(out, [(p.path, len(p)) for p in parts.parts], dims, dtype, attrs,
                                paths, labels, skipped)
            return len(parts), len(parts.parts)
        partial_path(out).unlink(missing_ok=True)
        writer = StoreWriter.create(out, len(parts), dims, dtype, attrs)
        try:
            for layer in parts.layers:
                start = 0
                for block in parts.iter_rows(layer, chunk):
                    writer.write_rows(start, {layer: block})
                    start += len(block)
            writer.finish(len(parts), paths, labels, skipped)
        finally:
            writer.close()
        return len(parts), len(parts.parts)
