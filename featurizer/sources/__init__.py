"""Input sources: folders, CSV/TXT lists, Parquet lists and WebDataset tar shards, as one ``SampleList``.

Each kind of source is one reader module; ``SOURCE_KINDS`` says which reader takes which input.
A new kind is one module with a test of the inputs it takes and a reader
``(specs, options, shard) -> SampleList`` (which applies ``shard``), plus one entry here.
Light: pyarrow is imported only to read Parquet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from alexfeat.featurizer.sources.folders import read_folders
from alexfeat.featurizer.sources.parquet import is_parquet_source, read_parquet
from alexfeat.featurizer.sources.samples import Sample, SampleList, SourceOptions, parse_shard
from alexfeat.featurizer.sources.tars import TarMember, expand_braces, is_tar_source, read_tars

__all__ = ["Sample", "SampleList", "SourceOptions", "TarMember", "SourceKind", "SOURCE_KINDS", "open_source",
           "source_kind", "expand_braces", "parse_shard"]


@dataclass(frozen=True)
class SourceKind:
    name: str
    claims: Callable[[Sequence[Path | str]], bool]  # the inputs given on the command line
    read: Callable[[Sequence[Path | str], SourceOptions, tuple[int, int] | None], SampleList]


# The first kind that claims the inputs reads them; folders, list files and image files take the rest.
SOURCE_KINDS = (
    SourceKind("tar", is_tar_source, read_tars),  # *.tar, or one brace pattern of them
    SourceKind("parquet", is_parquet_source, read_parquet),  # one *.parquet
    SourceKind("images", lambda specs: True, read_folders),  # a folder, a .csv/.txt/.tsv/.lst, image files
)


def open_source(spec: Path | str | list[Path], options: SourceOptions = SourceOptions(),
                shard: tuple[int, int] | None = None) -> SampleList:
    """The samples of a folder, list file, Parquet file, tar shards (paths or a brace pattern) or image files.

    Raises AlexfeatError for a missing source, unknown labels, or a sharded labelled tar input
    without ``--classes`` (each shard would otherwise see its own class list).
    """
    specs = _specs(spec)
    return _kind(specs).read(specs, options, shard)


def source_kind(spec: Path | str | list[Path]) -> str:
    """"tar" (WebDataset shards), "parquet" (a Parquet list) or "images" (folders, list files, image files)."""
    return _kind(_specs(spec)).name


def _specs(spec: Path | str | list[Path]) -> list[Path | str]:
    return [spec] if isinstance(spec, (str, Path)) else list(spec)


def _kind(specs: list[Path | str]) -> SourceKind:
    return next(kind for kind in SOURCE_KINDS if kind.claims(specs))
