"""A folder of part stores: the part names and the done markers that say which parts are finished.

Layout (img2dataset's shard convention)::

    DIR/part-SSSSS-KKKKK.h5          a finished FeatureStore (shard S, part K of that shard;
                                     the Ray engine names parts by their first input row instead)
    DIR/part-SSSSS-KKKKK.done.json   written last: the part's stats; its presence means "done"

A part without its marker is unfinished, whatever its state. Markers name their shard count and
how many parts their shard has, so a folder with a missing part is refused, not silently short.
Parts are read in name order, which is the input's order. No h5py here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from alexfeat.atomic import atomic_write_text
from alexfeat.errors import AlexfeatError

__all__ = ["part_name", "marker_path", "write_marker", "read_marker", "done_parts"]

MARKER_FORMAT = "alexfeat-part-v1"
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
