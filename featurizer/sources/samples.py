"""What every source yields: a ``SampleList``, and the rules all sources share (shards, labels).

A ``SampleList`` holds ordered keys (what the store records as paths), what to read for each (a
file path, or a member of a tar), integer labels and the class list. Drivers decode through
``ImageDataset``, which reads paths itself and calls ``read()`` on anything else. ``--shard I/N``
slices any source the same way: a contiguous 1/N of the rows sorted by key (``SampleList.shard``),
or, for a source split into files that are read whole, a contiguous 1/N of its sorted files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence, TypeVar

from alexfeat.errors import AlexfeatError

if TYPE_CHECKING:
    from alexfeat.featurizer.sources.tars import TarMember

__all__ = ["Sample", "SampleList", "SourceOptions", "parse_shard", "shard_slice", "read_classes",
           "labels_from_values"]

T = TypeVar("T")


@dataclass(frozen=True)
class Sample:
    key: str
    item: Path | TarMember
    label: int

    def read(self) -> bytes | Path:
        return self.item if isinstance(self.item, Path) else self.item.read()


@dataclass(frozen=True)
class SourceOptions:
    """How to read labels: ``classes_file`` fixes the class list (one name a line) for every shard."""

    classes_file: Path | None = None
    label_key: str | None = None  # a field of each tar sample's .json
    path_column: str = "path"  # Parquet
    label_column: str = "label"  # Parquet; absent column: unlabelled


@dataclass(frozen=True)
class SampleList:
    """An ordered list of samples with labels indexing ``classes`` (-1: unlabelled), from any source.

    ``paths`` are the keys as the store records them; ``files`` what the decoders read for each.
    """

    origin: str
    keys: tuple[str, ...]
    items: tuple[Path | TarMember, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    warnings: tuple[str, ...] = ()  # from listing: unlabelled rows, empty class folders

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Sample]:
        return (Sample(k, i, lab) for k, i, lab in zip(self.keys, self.items, self.labels))

    @property
    def paths(self) -> tuple[str, ...]:
        return self.keys

    @property
    def files(self) -> list[Path | TarMember]:
        return list(self.items)

    @property
    def labeled(self) -> bool:
        return bool(self.classes) and all(label >= 0 for label in self.labels)

    def select(self, indices: Sequence[int]) -> "SampleList":
        return replace(self, keys=tuple(self.keys[i] for i in indices), items=tuple(self.items[i] for i in indices),
                       labels=tuple(self.labels[i] for i in indices))

    def shard(self, index: int, count: int) -> "SampleList":
        """Rows ``[index*n/count, (index+1)*n/count)`` of the rows sorted by key."""
        order = sorted(range(len(self)), key=self.keys.__getitem__)
        return self.select(shard_slice(order, index, count))


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise AlexfeatError(f"--shard takes I/N with 0 <= I < N (e.g. 3/10), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def shard_slice(ordered: Sequence[T], index: int, count: int) -> Sequence[T]:
    """Shard ``index`` of ``count``: the contiguous ``[index*n/count, (index+1)*n/count)`` of ``ordered``."""
    return ordered[index * len(ordered) // count:(index + 1) * len(ordered) // count]


def read_classes(path: Path | None) -> tuple[str, ...] | None:
    """The class list of ``--classes`` (one name a line), or None when none is given."""
    if path is None:
        return None
    if not Path(path).is_file():
        raise AlexfeatError(f"--classes file {path} does not exist")
    names = tuple(line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())
    if not names or len(set(names)) != len(names):
        raise AlexfeatError(f"--classes file {path} must list distinct class names, one a line")
    return names


def labels_from_values(values: list, given: tuple[str, ...] | None, source: str,
                       sharded: bool) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Integer class indices or class names (None: unlabelled) -> (labels, classes)."""
    present = [v for v in values if v is not None]
    if not present:
        return (-1,) * len(values), ()
    if given is None and sharded:
        raise AlexfeatError(f"{source} is read one shard at a time, so its class list must be given: "
                            f"pass --classes FILE (one class name a line, in label order)")
    if all(isinstance(v, int) for v in present):
        classes = given if given is not None else tuple(str(i) for i in range(max(present) + 1))
        bad = [v for v in present if not 0 <= v < len(classes)]
        if bad:
            raise AlexfeatError(f"{source} has label {bad[0]}, outside the {len(classes)} classes of --classes")
        return tuple(-1 if v is None else v for v in values), classes
    names = [str(v) for v in present]
    classes = given if given is not None else tuple(sorted(set(names)))
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise AlexfeatError(f"{source} has classes missing from --classes: {', '.join(unknown[:5])}")
    lookup = {name: i for i, name in enumerate(classes)}
    return tuple(-1 if v is None else lookup[str(v)] for v in values), classes
