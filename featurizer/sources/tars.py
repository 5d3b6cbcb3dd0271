"""WebDataset tar shards: samples are the tar members that share a key (``a/b.jpg``, ``a/b.cls``).

Images are read by offset from uncompressed tars, so a worker never parses a tar to get one
image. Labels come from each sample's ``.cls`` (an integer) or a field of its ``.json``.
``--shard I/N`` splits whole tar files, so a shard reads only its own files.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.sources.samples import (SampleList, SourceOptions, labels_from_values, read_classes,
                                                 shard_slice)

__all__ = ["TAR_IMAGE_SUFFIXES", "TarMember", "expand_braces", "is_tar_source", "read_tars"]

TAR_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class TarMember:
    """One member of an uncompressed tar, read by offset (no tar parsing per image)."""

    tar: str
    offset: int
    size: int

    def read(self) -> bytes:
        if self.size < 0:
            raise OSError(f"sample has no {'/'.join(TAR_IMAGE_SUFFIXES)} member in {self.tar}")
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


def is_tar_source(specs: Sequence[Path | str]) -> bool:
    """Tar files, or one brace pattern of them (``shards/{00000..00099}.tar``)."""
    return bool(specs) and all(str(s).lower().endswith(".tar") for s in specs)


def expand_braces(pattern: str) -> list[str]:
    """``shards/{00000..00099}.tar`` -> 100 names (zero padding kept); ``{a,b}`` lists too.

    The two brace forms WebDataset users write; a dependency for them would be larger than this.
    """
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail, body = pattern[:match.start()], pattern[match.end():], match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        first, last = numeric.groups()
        width = len(first) if first.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(first), int(last) + 1)]
    else:
        options = body.split(",")
    return [name for option in options for name in expand_braces(head + option + tail)]


def read_tars(specs: Sequence[Path | str], options: SourceOptions, shard: tuple[int, int] | None) -> SampleList:
    """The samples of tar files (or one brace pattern), in sorted file order; ``shard`` takes whole files.

    Raises AlexfeatError for a missing or unreadable tar, a shard with no tar file, no samples at
    all, unknown labels, or a sharded labelled input without ``--classes``.
    """
    names = expand_braces(str(specs[0])) if len(specs) == 1 else [str(s) for s in specs]
    tars = sorted(names)
    origin = str(Path(tars[0]).resolve().parent)
    if shard:
        index, count = shard
        tars = shard_slice(tars, index, count)
        if not tars:
            raise AlexfeatError(f"shard {index}/{count} gets none of the tar files in {origin} (shards split whole "
                                f"tar files): use at most as many shards as there are tar files")
    missing = [t for t in tars if not Path(t).is_file()]
    if missing:
        raise AlexfeatError(f"tar shard {missing[0]} does not exist" + (f" (and {len(missing) - 1} more)"
                                                                         if len(missing) > 1 else ""))
    keys, items, values = [], [], []
    for tar in tars:
        for key, item, value in _index_tar(tar, options.label_key):
            keys.append(key)
            items.append(item)
            values.append(value)
    if not keys:
        raise AlexfeatError(f"{', '.join(tars[:3])} hold no samples")
    labels, classes = labels_from_values(values, read_classes(options.classes_file), tars[0] if len(tars) == 1
                                         else f"the tar shards in {origin}", sharded=shard is not None)
    return SampleList(origin, tuple(keys), tuple(items), labels, classes)


def _index_tar(tar: str, label_key: str | None) -> list[tuple[str, TarMember, int | str | None]]:
    """(``__key__``, image member, label) per sample, in file order; reads headers and the small label files."""
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(tar, "r:") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                folder, _, base = info.name.rpartition("/")
                stem, dot, suffix = base.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                sample = samples.setdefault(key, {})
                suffix = "." + suffix.lower() if dot else ""
                if suffix in TAR_IMAGE_SUFFIXES and "image" not in sample:
                    sample["image"] = TarMember(tar, info.offset_data, info.size)
                elif suffix == ".cls":
                    sample["cls"] = archive.extractfile(info).read().decode().strip()
                elif suffix == ".json" and label_key:
                    sample["json"] = archive.extractfile(info).read()
    except (tarfile.TarError, OSError) as exc:
        raise AlexfeatError(f"{tar} is not a readable uncompressed tar: {exc}") from None
    return [(key, s.get("image", TarMember(tar, 0, -1)), _tar_label(s, label_key, tar, key))
            for key, s in samples.items()]


def _tar_label(sample: dict, label_key: str | None, tar: str, key: str) -> int | str | None:
    if label_key and "json" in sample:
        try:
            value = json.loads(sample["json"]).get(label_key)
        except (ValueError, AttributeError):
            raise AlexfeatError(f"{tar}: sample {key} has a .json that is not a JSON object") from None
        return value
    if "cls" in sample:
        try:
            return int(sample["cls"])
        except ValueError:
            raise AlexfeatError(f"{tar}: sample {key} has a .cls that is not an integer: {sample['cls']!r}") from None
    return None
