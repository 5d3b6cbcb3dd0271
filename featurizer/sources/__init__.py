"""Input sources: folders, CSV/TXT lists, Parquet files and WebDataset tar shards, as one ``SampleList``.

Each kind of source is one reader module; ``SOURCE_KINDS`` says which reader takes which input, after
``expand_inputs`` has turned globs, brace patterns and folders of shards into files (docs/sources.md).
A new kind is one module with a test of the inputs it takes and a reader
``(specs, options, shard) -> SampleList`` (which applies ``shard``), plus one entry here.
Light: pyarrow is imported only to read Parquet.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.sources.folders import IMAGE_SUFFIXES, read_folders
from alexfeat.featurizer.sources.parquet import ParquetImage, is_parquet_source, read_parquet
from alexfeat.featurizer.sources.samples import Sample, SampleList, SourceOptions, parse_shard
from alexfeat.featurizer.sources.tars import TarMember, expand_braces, is_tar_source, read_tars

__all__ = ["Sample", "SampleList", "SourceOptions", "TarMember", "ParquetImage", "SourceKind", "SOURCE_KINDS",
           "open_source", "source_kind", "expand_braces", "expand_inputs", "parse_shard"]


@dataclass(frozen=True)
class SourceKind:
    name: str
    claims: Callable[[Sequence[Path | str]], bool]  # the inputs given on the command line
    read: Callable[[Sequence[Path | str], SourceOptions, tuple[int, int] | None], SampleList]


# The first kind that claims the inputs reads them; folders, list files and image files take the rest.
SOURCE_KINDS = (
    SourceKind("tar", is_tar_source, read_tars),  # *.tar
    SourceKind("parquet", is_parquet_source, read_parquet),  # *.parquet: lists of paths, or the images inside
    SourceKind("images", lambda specs: True, read_folders),  # a folder, a .csv/.txt/.tsv/.lst, image files
)


def open_source(spec: Path | str | list[Path], options: SourceOptions = SourceOptions(),
                shard: tuple[int, int] | None = None) -> SampleList:
    """The samples of a folder, list file, Parquet files, tar shards or image files (``expand_inputs``),
    less those ``options.per_class`` and ``options.limit`` leave out (of this shard's rows).

    Raises AlexfeatError for a missing source, unknown labels, or a sharded labelled tar input
    without ``--classes`` (each shard would otherwise see its own class list).
    """
    specs = expand_inputs(_specs(spec))
    return _kind(specs).read(specs, options, shard).subset(options.limit, options.per_class)


def source_kind(spec: Path | str | list[Path]) -> str:
    """"tar" (WebDataset shards), "parquet" (a Parquet list) or "images" (folders, list files, image files)."""
    return _kind(expand_inputs(_specs(spec))).name


def expand_inputs(specs: Sequence[Path | str]) -> list[Path | str]:
    """Each input that is not a file or folder by that name, as the files its glob (``shards/*.tar``) or brace
    pattern (``shards/{00000..00099}.tar``) names, sorted; a folder that holds tar or Parquet files and no images
    or sub-folders, as those files. Raises AlexfeatError for a pattern that names no file, and for a folder
    written by ``datasets.Dataset.save_to_disk`` (Arrow files: write Parquet instead)."""
    expanded: list[Path | str] = []
    for spec in specs:
        path = Path(spec)
        if path.exists() or path.is_symlink():
            expanded += _shards_in(path) if path.is_dir() else [spec]
        elif glob.has_magic(str(spec)):
            matches = sorted(glob.glob(str(spec)))
            if not matches:
                raise AlexfeatError(f"{spec} does not exist, and matches no file as a pattern")
            expanded += matches
        else:
            expanded += expand_braces(str(spec)) if "{" in str(spec) else [spec]
    return expanded


def _specs(spec: Path | str | Sequence[Path | str]) -> list[Path | str]:
    return [spec] if isinstance(spec, (str, Path)) else list(spec)


def _shards_in(folder: Path) -> list[Path | str]:
    """The tar or Parquet files of a folder of shards; else the folder itself (images)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if (folder / "state.json").is_file() and any(p.suffix == ".arrow" for p in entries):
        raise AlexfeatError(f"{folder} is a dataset written by datasets' save_to_disk (Arrow files), which alexfeat "
                            f"does not read: write it as Parquet, e.g. load_from_disk('{folder}').to_parquet("
                            f"'data.parquet')")
    if any(p.suffix.lower() in IMAGE_SUFFIXES or p.is_dir() for p in entries):
        return [folder]
    for suffix in (".tar", ".parquet"):
        shards = sorted(p for p in entries if p.suffix.lower() == suffix and p.is_file())
        if shards:
            return shards
    return [folder]


def _kind(specs: list[Path | str]) -> SourceKind:
    return next(kind for kind in SOURCE_KINDS if kind.claims(specs))
