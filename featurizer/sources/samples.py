"""What every source yields: a ``SampleList``, and the rules all sources share (shards, labels).

A ``SampleList`` holds ordered keys (what the store records as paths), what to read for each (a
file path, a member of a tar, or a Parquet cell), integer labels and the class list. Drivers decode through
``ImageDataset``, which reads paths itself and calls ``read()`` on anything else. ``--shard I/N``
slices any source the same way: a contiguous 1/N of the rows sorted by key (``SampleList.shard``),
or, for a source split into files that are read whole, a contiguous 1/N of its sorted files.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence, TypeVar

from alexfeat.errors import AlexfeatError

if TYPE_CHECKING:
    from alexfeat.featurizer.sources.parquet import ParquetImage
    from alexfeat.featurizer.sources.tars import TarMember

__all__ = ["Sample", "SampleList", "SourceOptions", "parse_shard", "shard_slice", "read_classes",
           "labels_from_values", "check_subset", "subset_indices"]

T = TypeVar("T")


@dataclass(frozen=True)
class Sample:
    key: str
    item: Path | TarMember | ParquetImage
    label: int

    def read(self) -> bytes | Path:
        return self.item if isinstance(self.item, Path) else self.item.read()


@dataclass(frozen=True)
class SourceOptions:
    """How to read a source: ``classes_file`` fixes the class list (one name a line) for every shard;
    ``per_class`` and ``limit`` keep a subset of the rows (``subset_indices``)."""

    classes_file: Path | None = None
    label_key: str | None = None  # a field of each tar sample's .json
    path_column: str = "path"  # Parquet lists of paths
    label_column: str | None = None  # Parquet; None: "label", else the one ClassLabel column, else unlabelled
    image_column: str | None = None  # Parquet with the images inside; None: found from the schema
    limit: int | None = None
    per_class: int | None = None

    def __post_init__(self) -> None:
        check_subset(self.limit, self.per_class)


@dataclass(frozen=True)
class SampleList:
    """An ordered list of samples with labels indexing ``classes`` (-1: unlabelled), from any source.

    ``paths`` are the keys as the store records them; ``files`` what the decoders read for each.
    """

    origin: str
    keys: tuple[str, ...]
    items: tuple[Path | TarMember | ParquetImage, ...]
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
    def files(self) -> list[Path | TarMember | ParquetImage]:
        return list(self.items)

    @property
    def labeled(self) -> bool:
        return bool(self.classes) and all(label >= 0 for label in self.labels)

    def select(self, indices: Sequence[int]) -> "SampleList":
        return replace(self, keys=tuple(self.keys[i] for i in indices), items=tuple(self.items[i] for i in indices),
                       labels=tuple(self.labels[i] for i in indices))

    def subset(self, limit: int | None, per_class: int | None) -> "SampleList":
        """The rows ``--per-class`` and ``--limit`` keep (``subset_indices``)."""
        if limit is None and per_class is None:
            return self
        if per_class is not None and not self.classes:
            raise AlexfeatError(f"--per-class needs labelled images, and {self.origin} has no labels: use --limit")
        return self.select(subset_indices(self.labels, limit, per_class))

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


def check_subset(limit: int | None, per_class: int | None) -> None:
    """AlexfeatError unless ``--limit`` and ``--per-class`` are each unset or a whole number of images, at least 1."""
    for name, value in (("limit", limit), ("per_class", per_class)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise AlexfeatError(f"--{name.replace('_', '-')} takes a whole number of images, at least 1, "
                                f"not {value!r}")


def subset_indices(labels: Sequence[int], limit: int | None, per_class: int | None) -> list[int]:
    """The rows kept by ``--per-class`` then ``--limit``, in source order.

    ``per_class``: the first ``per_class`` rows of each class (unlabelled rows count as one more class);
    ``limit``: of those ``n`` rows, ``limit`` spread evenly through them (rows ``i * n // limit``), so that a
    source sorted by class (class folders) gives every class its share.
    """
    rows = list(range(len(labels)))
    if per_class is not None:
        seen: dict[int, int] = {}
        kept = []
        for i in rows:
            seen[labels[i]] = seen.get(labels[i], 0) + 1
            if seen[labels[i]] <= per_class:
                kept.append(i)
        rows = kept
    if limit is not None and limit < len(rows):
        rows = [rows[i * len(rows) // limit] for i in range(limit)]
    return rows


def labels_from_values(values: list, given: tuple[str, ...] | None, source: str, sharded: bool,
                       column: str | None = None) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Integer class indices or class names (None: unlabelled) -> (labels, classes).

    Floats are what pandas writes for an integer column with missing values: a whole number is that
    integer, NaN unlabelled; another float is refused, naming ``column`` and the row. An index
    of -1 is unlabelled (Hugging Face datasets write -1 for a missing ``ClassLabel``).
    """
    values = [_whole(v, i, source, column) for i, v in enumerate(values)]
    values = [None if v == -1 and isinstance(v, int) else v for v in values]
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


def _whole(value, row: int, source: str, column: str | None):
    """A float label as its integer (None for NaN); AlexfeatError for a fraction."""
    if not isinstance(value, float):
        return value
    if math.isnan(value):
        return None
    if not value.is_integer():
        raise AlexfeatError(f"{source}: {f'column {column!r}' if column else 'the label'} of row {row} (counting "
                            f"from 0) is {value}, not a class index (a whole number) or a class name")
    return int(value)
