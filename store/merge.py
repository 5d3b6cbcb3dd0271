"""Merging a folder of finished parts into one store: copied, or virtual (mapped onto the parts)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from alexfeat.lock import RunLock
from alexfeat.output import check_output
from alexfeat.store.paths import lock_path, partial_path
from alexfeat.store.reader import PartsStore
from alexfeat.store.writer import StoreWriter, write_virtual_store

__all__ = ["merge_parts"]


def merge_parts(folder: Path, out: Path, virtual: bool = False, overwrite: bool = False,
                chunk: int = 4096) -> tuple[int, int]:
    """One store ``out`` from the finished parts in ``folder``; returns (rows, parts).

    ``virtual``: ``out`` maps onto the part files instead of copying them (see the caveats in docs/scale-out.md).
    """
    folder, out = Path(folder), Path(out)
    check_output(out, overwrite=overwrite, inputs=sorted(folder.glob("*.h5")))
    with RunLock(lock_path(out), f"the store {out}"), PartsStore.open(folder) as parts:
        provenance = replace(parts.provenance, part=None, merged_from=str(folder.resolve()),
                             merged_parts=len(parts.parts))
        dims = {layer: parts.dim(layer) for layer in parts.layers}
        dtype = provenance.dtype
        paths, labels, skipped = parts.paths, parts.labels.tolist(), parts.skipped
        if virtual:
            write_virtual_store(out, [(p.path, len(p)) for p in parts.parts], dims, dtype, provenance,
                                paths, labels, skipped)
            return len(parts), len(parts.parts)
        partial_path(out).unlink(missing_ok=True)
        writer = StoreWriter.create(out, len(parts), dims, dtype, provenance)
        try:
            for layer in parts.layers:
                start = 0
                for block in parts.iter_rows(layer, chunk):
                    writer.write_rows(start, {layer: block})
                    start += len(block)
            writer.finish(len(parts), paths, labels, skipped)
        except BaseException:
            writer.discard()  # a failed merge (a full disk, Ctrl-C) leaves nothing; the parts are its resume
            raise
        return len(parts), len(parts.parts)
