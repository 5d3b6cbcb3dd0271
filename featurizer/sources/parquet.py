"""Parquet lists: one row per image, a path column (relative to the file's folder) and an optional label.

pyarrow is optional (``alexfeat[parquet]``) and imported only when a Parquet file is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.sources.samples import SampleList, SourceOptions, labels_from_values, read_classes

__all__ = ["is_parquet_source", "read_parquet"]


def is_parquet_source(specs: Sequence[Path | str]) -> bool:
    return len(specs) == 1 and str(specs[0]).lower().endswith(".parquet")


def read_parquet(specs: Sequence[Path | str], options: SourceOptions, shard: tuple[int, int] | None) -> SampleList:
    """The rows of one Parquet file: ``options.path_column``, and ``options.label_column`` where present.

    Raises AlexfeatError for a missing or unreadable file, a missing path column, or unknown labels.
    """
    import pyarrow
    import pyarrow.parquet as pq

    path = Path(specs[0])
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
    labels, classes = labels_from_values(values, read_classes(options.classes_file), str(path), sharded=False)
    root = path.parent
    samples = SampleList(str(path.resolve()), keys, tuple(root / k for k in keys), labels, classes)
    return samples.shard(*shard) if shard else samples
