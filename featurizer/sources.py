"""Input sources: folders, CSV/TXT lists, Parquet lists and WebDataset tar shards, as one sample list.

Every source becomes a ``SampleList``: ordered keys (what the store records as paths), what to
read for each (a file path, or a member of a tar), integer labels and the class list. Drivers
decode through ``ImageDataset``, which reads paths itself and calls ``read()`` on anything else.
``--shard I/N`` slices any source the same way: a contiguous 1/N of the rows sorted by key, or
for tar shards a contiguous 1/N of the (sorted) tar files, so that every shard can be read
without looking at the others.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.images import list_images

__all__ = ["Sample", "SampleList", "SourceOptions", "TarMember", "open_source", "expand_braces", "parse_shard"]

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
    """An ordered list of samples with labels indexing ``classes`` (-1: unlabelled).

    Duck-types ``ImageList`` (``paths``, ``labels``, ``classes``, ``files``) so the runners
    take either.
    """

    origin: str
    keys: tuple[str, ...]
    items: tuple[Path | TarMember, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    warnings: tuple[str, ...] = ()  # ImageList's: unlabelled rows, empty class folders

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
        return self.select(order[index * len(order) // count:(index + 1) * len(order) // count])


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise AlexfeatError(f"--shard takes I/N with 0 <= I < N (e.g. 3/10), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def open_source(spec: Path | str | list[Path], options: SourceOptions = SourceOptions(),
                shard: tuple[int, int] | None = None) -> SampleList:
    """The samples of a folder, list file, Parquet file, tar shards (paths or a brace pattern) or image files.

    Raises AlexfeatError for a missing source, unknown labels, or a sharded labelled tar input
    without ``--classes`` (each shard would otherwise see its own class list).
    """
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    kind = source_kind(specs)
    if kind == "tar":
        names = expand_braces(str(specs[0])) if len(specs) == 1 else [str(s) for s in specs]
        return _tar_source(names, options, shard)
    if kind == "parquet":
        samples = _parquet_source(Path(specs[0]), options)
    else:
        images = list_images([Path(s) for s in specs])
        classes_given = _read_classes(options.classes_file)
        labels, classes = images.labels, images.classes
        if classes_given is not None and classes:
            labels, classes = _relabel(labels, classes, classes_given, str(spec)), classes_given
        origin = str(Path(specs[0]).resolve()) if len(specs) == 1 else str(images.root.resolve())
        samples = SampleList(origin, images.paths, tuple(images.files), tuple(labels), tuple(classes),
                             images.warnings)
    return samples.shard(*shard) if shard else samples


def source_kind(spec: Path | str | list[Path]) -> str:
    """"tar" (WebDataset shards), "parquet" (a Parquet list) or "images" (folders, list files, image files)."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if specs and all(_is_tar(str(s)) for s in specs):
        return "tar"
    if len(specs) == 1 and str(specs[0]).lower().endswith(".parquet"):
        return "parquet"
    return "images"


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


def _is_tar(name: str) -> bool:
    return name.lower().endswith(".tar")


def _read_classes(path: Path | None) -> tuple[str, ...] | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise AlexfeatError(f"--classes file {path} does not exist")
    names = tuple(line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())
    if not names or len(set(names)) != len(names):
        raise AlexfeatError(f"--classes file {path} must list distinct class names, one a line")
    return names


def _relabel(labels: Sequence[int], classes: Sequence[str], given: tuple[str, ...], source: str) -> tuple[int, ...]:
    unknown = sorted(set(classes) - set(given))
    if unknown:
        raise AlexfeatError(f"{source} has classes missing from --classes: {', '.join(unknown[:5])}")
    return tuple(given.index(classes[label]) if label >= 0 else -1 for label in labels)


def _labels_from_values(values: list, given: tuple[str, ...] | None, source: str,
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


def _parquet_source(path: Path, options: SourceOptions) -> SampleList:
    import pyarrow
    import pyarrow.parquet as pq

    if not path.is_file():
        raise AlexfeatError(f"{path} does not exist")
    try:
        schema = pq.read_schema(path)
        if options.path_column not in schema.names:
            raise AlexfeatError(f"{path} has no column {options.path_column!r} (columns: {', '.join(schema.names)}); "
                                f"name the path column with --path-column")
        columns = [options.path_column] + ([options.label_column] if options.label_column in schema.names else [])
        table = pq.read_table(path, columns=columns)
    except (OSError, pyarrow.ArrowException) as exc:  # ArrowInvalid: not Parquet at all
        raise AlexfeatError(f"{path} is not a readable Parquet file: {exc}") from None
    # Paths are not checked one by one (10M stat calls); a missing file is skipped with its reason.
    keys = tuple(str(p) for p in table.column(options.path_column).to_pylist())
    values = table.column(options.label_column).to_pylist() if len(columns) == 2 else [None] * len(keys)
    labels, classes = _labels_from_values(values, _read_classes(options.classes_file), str(path), sharded=False)
    root = path.parent
    return SampleList(str(path.resolve()), keys, tuple(root / k for k in keys), labels, classes)


def _tar_source(tars: list[str], options: SourceOptions, shard: tuple[int, int] | None) -> SampleList:
    tars = sorted(tars)
    origin = str(Path(tars[0]).resolve().parent)
    if shard:
        index, count = shard
        tars = tars[index * len(tars) // count:(index + 1) * len(tars) // count]
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
    labels, classes = _labels_from_values(values, _read_classes(options.classes_file), tars[0] if len(tars) == 1
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
