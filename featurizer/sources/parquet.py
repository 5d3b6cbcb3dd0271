"""Parquet files: a list of image paths, or the images themselves (Hugging Face datasets, img2dataset).

What a file holds is read from its schema (docs/sources.md):
- an image column: a struct of ``bytes`` and ``path`` (Hugging Face's ``Image`` feature), or a binary
  column (img2dataset's ``jpg``); ``--image-column`` names it where there are several;
- else a column of paths (``--path-column``, relative to the file's folder).
Labels: ``--label-column``, else ``label``, else the one ``ClassLabel`` column of the Hugging Face
features; a ``ClassLabel``'s names (in the schema's ``huggingface`` metadata) are the classes.
Embedded images are read a row group at a time (the last ones read are cached per process), so no
image is held in memory before its batch.

pyarrow is optional (``alexfeat[parquet]``) and imported only when a Parquet file is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.sources.samples import SampleList, SourceOptions, labels_from_values, read_classes

if TYPE_CHECKING:
    import pyarrow

__all__ = ["ParquetImage", "is_parquet_source", "read_parquet"]

@dataclass(frozen=True)
class ParquetImage:
    """One image stored in a Parquet cell: row ``row`` of row group ``row_group`` of ``column``."""

    file: str
    row_group: int
    row: int
    column: str  # "jpg", or "image.bytes" for a struct column

    def read(self) -> bytes:
        data = _row_group_cells(self.file, self.row_group, self.column)[self.row]
        if data is None:
            raise OSError(f"no image bytes in {self.column} of this row of {self.file}")
        return data


def is_parquet_source(specs: Sequence[Path | str]) -> bool:
    return bool(specs) and all(str(s).lower().endswith(".parquet") for s in specs)


def read_parquet(specs: Sequence[Path | str], options: SourceOptions, shard: tuple[int, int] | None) -> SampleList:
    """The rows of Parquet files, in file order (files sorted by name) then row order.

    Raises AlexfeatError for a missing or unreadable file, no image or path column, an ambiguous image or
    label column, files whose columns differ, or labels that are neither class indices nor names.
    """
    files = sorted(Path(s) for s in specs)
    parts = [_read_file(file, options) for file in files]
    keys = [key for part in parts for key in part.keys]
    if len(set(keys)) != len(keys):  # a key the store records names one row: then file name and row number
        keys = [f"{file.name}#{i}" for file, part in zip(files, parts) for i in range(len(part.items))]
    for file, part in zip(files[1:], parts[1:]):
        if (part.names, part.label) != (parts[0].names, parts[0].label):
            raise AlexfeatError(f"{file}'s label column or class names differ from {files[0]}'s")
    origin = str(files[0].resolve()) if len(files) == 1 else str(files[0].resolve().parent)
    given = read_classes(options.classes_file) or parts[0].names
    labels, classes = labels_from_values([v for part in parts for v in part.values], given, origin, sharded=False,
                                         column=parts[0].label)
    samples = SampleList(origin, tuple(keys), tuple(item for part in parts for item in part.items), labels, classes)
    return samples.shard(*shard) if shard else samples


@dataclass
class _FileRows:
    keys: list[str]
    items: list
    values: list
    label: str | None  # the label column
    names: tuple[str, ...] | None  # its ClassLabel's names


def _read_file(path: Path, options: SourceOptions) -> _FileRows:
    import pyarrow
    import pyarrow.parquet as pq

    if not path.is_file():
        raise AlexfeatError(f"{path} does not exist")
    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        features = _hf_features(schema)
        image = _image_column(path, schema, features, options.image_column)
        label = _label_column(path, schema, features, options.label_column)
        if image is None:
            return _path_rows(path, parquet, schema, label, features, options.path_column)
        return _image_rows(path, parquet, schema, image, label, features)
    except (OSError, pyarrow.ArrowException) as exc:  # ArrowInvalid: not Parquet at all
        raise AlexfeatError(f"{path} is not a readable Parquet file: {exc}") from None


def _path_rows(path: Path, parquet, schema: pyarrow.Schema, label: str | None, features: dict,
               path_column: str) -> _FileRows:
    if path_column not in schema.names:
        raise AlexfeatError(f"{path} has no image column and no column {path_column!r} of paths (columns: "
                            f"{', '.join(schema.names)}); name one with --image-column or --path-column")
    table = parquet.read(columns=[path_column] + ([label] if label else []))
    # Paths are not checked one by one (10M stat calls); a missing file is skipped with its reason.
    keys = [str(p) for p in table.column(path_column).to_pylist()]
    return _FileRows(keys, [path.parent / k for k in keys], _values(table, label, len(keys)), label,
                     _class_names(features, label))


def _image_rows(path: Path, parquet, schema: pyarrow.Schema, image: str, label: str | None,
                features: dict) -> _FileRows:
    import pyarrow

    struct = pyarrow.types.is_struct(schema.field(image).type)
    cell = f"{image}.bytes" if struct else image
    columns = ([f"{image}.path"] if struct and _has_field(schema.field(image).type, "path") else []) \
        + (["key"] if "key" in schema.names and image != "key" else []) + ([label] if label else [])
    table = parquet.read(columns=columns) if columns else None
    # The Hugging Face image struct holds either bytes or a path to a file (when only the path is set).
    stored_paths = _struct_field(table.column(image), "path") if f"{image}.path" in columns else None
    items: list = []
    for group in range(parquet.metadata.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        items += [ParquetImage(str(path.resolve()), group, row, cell) for row in range(rows)]
    if stored_paths is not None:
        items = [item if present or stored is None else path.parent / stored
                 for item, present, stored in zip(items, _cells_present(parquet, cell), stored_paths)]
    n = len(items)
    if "key" in columns:
        keys = [str(k) for k in table.column("key").to_pylist()]
    elif stored_paths is not None and None not in stored_paths and len(set(stored_paths)) == n:
        keys = [str(p) for p in stored_paths]
    else:
        keys = [f"{path.name}#{i}" for i in range(n)]
    return _FileRows(keys, items, _values(table, label, n), label, _class_names(features, label))


def _cells_present(parquet, cell: str) -> list[bool]:
    """Which rows hold image bytes: from the row group's null count where it is recorded as 0, else a pass over
    the column's validity (reading its bytes), one row group at a time."""
    present: list[bool] = []
    for group in range(parquet.metadata.num_row_groups):
        if _null_count(parquet.metadata.row_group(group), cell) == 0:
            present += [True] * parquet.metadata.row_group(group).num_rows
            continue
        column = parquet.read_row_group(group, columns=[cell]).column(0)
        if column.type.num_fields:  # "image.bytes" reads as a struct of one field
            column = column.combine_chunks().field(0)
        present += column.is_valid().to_pylist()
    return present


def _null_count(row_group, cell: str) -> int | None:
    """The null count the file records for column ``cell`` of ``row_group`` (None: not recorded)."""
    for j in range(row_group.num_columns):
        column = row_group.column(j)
        if column.path_in_schema == cell:
            stats = column.statistics
            return stats.null_count if stats is not None and stats.has_null_count else None
    return None


def _struct_field(column, name: str) -> list:
    """A struct column's field as a list (reading "image.path" gives the struct "image" of that field alone)."""
    array = column.combine_chunks()
    return array.field(name).to_pylist()


def _values(table, label: str | None, n: int) -> list:
    return table.column(label).to_pylist() if label else [None] * n


def _hf_features(schema: pyarrow.Schema) -> dict:
    """The Hugging Face ``features`` recorded in the schema metadata ({} when none)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return {}
    try:
        features = json.loads(raw).get("info", {}).get("features", {})
    except (ValueError, AttributeError):
        return {}
    return features if isinstance(features, dict) else {}


def _has_field(struct_type, name: str) -> bool:
    return struct_type.get_field_index(name) >= 0


def _image_column(path: Path, schema: pyarrow.Schema, features: dict, given: str | None) -> str | None:
    """The column holding the images: ``given``, the Hugging Face ``Image`` feature, a struct with a binary
    ``bytes`` field, or a binary column; None when there is none (a list of paths)."""
    if given is not None:
        if given not in schema.names:
            raise AlexfeatError(f"{path} has no column {given!r} (columns: {', '.join(schema.names)})")
        if not (_is_binary(schema.field(given).type) or _is_image_struct(schema.field(given).type)):
            raise AlexfeatError(f"{path}: column {given!r} holds {schema.field(given).type}, not images "
                                f"(binary, or a struct with a bytes field)")
        return given
    candidates = [name for name, f in features.items() if isinstance(f, dict) and f.get("_type") == "Image"
                  and name in schema.names]
    if not candidates:
        candidates = [f.name for f in schema if _is_image_struct(f.type)] \
            or [f.name for f in schema if _is_binary(f.type)]
    if len(candidates) > 1:
        raise AlexfeatError(f"{path} has several image columns ({', '.join(candidates)}): name one with "
                            f"--image-column")
    return candidates[0] if candidates else None


def _is_binary(arrow_type) -> bool:
    import pyarrow

    return pyarrow.types.is_binary(arrow_type) or pyarrow.types.is_large_binary(arrow_type)


def _is_image_struct(arrow_type) -> bool:
    import pyarrow

    return (pyarrow.types.is_struct(arrow_type) and _has_field(arrow_type, "bytes")
            and _is_binary(arrow_type.field("bytes").type))


def _label_column(path: Path, schema: pyarrow.Schema, features: dict, given: str | None) -> str | None:
    """``given``, else ``label``, else the one ``ClassLabel`` column; None: unlabelled."""
    if given is not None:
        if given not in schema.names:
            raise AlexfeatError(f"{path} has no column {given!r} (columns: {', '.join(schema.names)}); "
                                f"name the label column with --label-column")
        return given
    if "label" in schema.names:
        return "label"
    class_labels = [name for name, f in features.items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"
                    and name in schema.names]
    if len(class_labels) > 1:
        raise AlexfeatError(f"{path} has several label columns ({', '.join(class_labels)}): name one with "
                            f"--label-column")
    return class_labels[0] if class_labels else None


def _class_names(features: dict, label: str | None) -> tuple[str, ...] | None:
    feature = features.get(label) if label else None
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and feature.get("names"):
        return tuple(str(n) for n in feature["names"])
    return None


@lru_cache(maxsize=4)
def _row_group_cells(file: str, row_group: int, column: str) -> list[bytes | None]:
    """The image bytes of one row group (cached: a batch's images mostly share one)."""
    import pyarrow.parquet as pq

    cells = pq.ParquetFile(file).read_row_group(row_group, columns=[column]).column(0).combine_chunks()
    if cells.type.num_fields:  # "image.bytes" reads as a struct of one field
        cells = cells.field(0)
    return cells.to_pylist()
