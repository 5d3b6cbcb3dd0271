"""Images on disk: class folders, flat folders, list files (CSV/TXT) or image files.

``list_images`` gives an ``ImageList``: files under one root, with labels from folder names or a
list's second column. The trainers read it as it is (they need the files on disk);
``read_folders`` turns it into the ``SampleList`` that every source yields for featurize.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.sources.samples import SampleList, SourceOptions, read_classes, subset_indices

__all__ = ["IMAGE_SUFFIXES", "LIST_SUFFIXES", "DEFAULT_MAX_PIXELS", "ImageList", "list_images", "read_folders"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
LIST_SUFFIXES = frozenset({".csv", ".txt", ".tsv", ".lst"})
# Larger images are skipped as decompression bombs. Cameras reach ~200 MP; PIL's own limit
# (an error at 179 MP) refused 108 MP phone photos. Here, not in decode.py: the CLI reads it without torch.
DEFAULT_MAX_PIXELS = 250_000_000


@dataclass(frozen=True)
class ImageList:
    """An ordered set of image files on disk with optional labels.

    ``paths`` are POSIX strings relative to ``root`` (absolute when a list file names
    files outside its folder); ``labels[i]`` indexes ``classes`` or is -1 (unlabeled).
    """

    root: Path
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    warnings: tuple[str, ...] = ()  # what the listing left out or could not label; featurize prints them

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, i: int) -> Path:
        return self.root / self.paths[i]

    @property
    def files(self) -> list[Path]:
        return [self.root / p for p in self.paths]

    @property
    def labeled(self) -> bool:
        return bool(self.classes) and all(label >= 0 for label in self.labels)

    def subset(self, limit: int | None, per_class: int | None) -> "ImageList":
        """The images ``--per-class`` and ``--limit`` keep, by the rule every source shares (``subset_indices``)."""
        rows = subset_indices(self.labels, limit, per_class)
        return replace(self, paths=tuple(self.paths[i] for i in rows), labels=tuple(self.labels[i] for i in rows))


def list_images(sources: Path | list[Path]) -> ImageList:
    """List images from one folder, one list file, or several image files and folders (unlabelled).

    A folder whose non-hidden sub-folders hold the images is a class layout (labels
    from sorted folder names); a folder with images only at its top is flat (no labels).
    Both are searched recursively; hidden files and folders are ignored. Broken symbolic
    links are listed, so that decoding skips them with a reason instead of losing them.
    Raises AlexfeatError when the source is missing or holds no image, when class names
    differ only in case, and when images lie beside class folders (their label is unknown).
    An empty class folder is left out of the classes, with a warning.
    """
    if isinstance(sources, list) and len(sources) == 1:
        sources = sources[0]
    if isinstance(sources, list):
        return _list_files(sources)
    source = Path(sources)
    if not source.exists():
        raise AlexfeatError(f"{source} does not exist")
    if source.is_dir():
        return _list_folder(source)
    if source.suffix.lower() in LIST_SUFFIXES:
        return _list_file(source)
    return _list_files([source])


def read_folders(specs: Sequence[Path | str], options: SourceOptions = SourceOptions(),
                 shard: tuple[int, int] | None = None) -> SampleList:
    """The samples of one folder or list file, or of several image files and folders (``list_images``).

    ``options.classes_file`` fixes the class list (labels are renumbered to it); raises AlexfeatError
    as ``list_images`` does, and for classes that the class list lacks.
    """
    images = list_images([Path(s) for s in specs])
    classes_given = read_classes(options.classes_file)
    labels, classes = images.labels, images.classes
    if classes_given is not None and classes:
        labels, classes = _relabel(labels, classes, classes_given, str(specs[0])), classes_given
    origin = str(Path(specs[0]).resolve()) if len(specs) == 1 else str(images.root.resolve())
    samples = SampleList(origin, images.paths, tuple(images.files), tuple(labels), tuple(classes), images.warnings)
    return samples.shard(*shard) if shard else samples


def _relabel(labels: Sequence[int], classes: Sequence[str], given: tuple[str, ...], source: str) -> tuple[int, ...]:
    unknown = sorted(set(classes) - set(given))
    if unknown:
        raise AlexfeatError(f"{source} has classes missing from --classes: {', '.join(unknown[:5])}")
    return tuple(given.index(classes[label]) if label >= 0 else -1 for label in labels)


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _images_below(folder: Path, root: Path) -> list[Path]:
    found = [p for p in folder.rglob("*") if _is_image(p) and _is_file_or_broken_link(p) and not _is_hidden(p, root)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _is_file_or_broken_link(path: Path) -> bool:
    return path.is_file() or (path.is_symlink() and not path.exists())


def _list_folder(root: Path) -> ImageList:
    top_images = sorted(p.name for p in root.iterdir()
                        if _is_image(p) and _is_file_or_broken_link(p) and not p.name.startswith("."))
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = {d.name: _images_below(d, root) for d in subdirs}
    classes = tuple(name for name, files in per_class.items() if files)
    if classes and top_images:
        shown = ", ".join(top_images[:3]) + (f" (and {len(top_images) - 3} more)" if len(top_images) > 3 else "")
        raise AlexfeatError(f"{root} holds class folders ({', '.join(classes[:5])}) and images beside them "
                            f"({shown}) whose class is unknown: move them into a class folder, or list the "
                            f"files in a CSV")
    if classes:
        _check_case(classes, f"class folders in {root}")
        empty = [name for name, files in per_class.items() if not files]
        warnings = tuple(f"class folder {name}/ holds no images: left out of the classes" for name in empty)
        paths, labels = [], []
        for label, name in enumerate(classes):
            paths += [p.relative_to(root).as_posix() for p in per_class[name]]
            labels += [label] * len(per_class[name])
        return ImageList(root, tuple(paths), tuple(labels), classes, warnings)
    files = _images_below(root, root)
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise AlexfeatError(f"{root} holds no image files (looked recursively for {suffixes})")
    return ImageList(root, tuple(p.relative_to(root).as_posix() for p in files), (-1,) * len(files), ())


def _check_case(classes: tuple[str, ...], where: str) -> None:
    """Cats and cats are one class to a person and two to a file system: refuse to guess."""
    by_folded: dict[str, list[str]] = {}
    for name in classes:
        by_folded.setdefault(name.casefold(), []).append(name)
    clashes = [names for names in by_folded.values() if len(names) > 1]
    if clashes:
        raise AlexfeatError(f"{where} differ only in case: {' vs '.join(clashes[0])}; rename or merge them")


def _list_file(list_path: Path) -> ImageList:
    """Read ``path[,label]`` rows (comma, tab or whitespace separated; optional header)."""
    text = list_path.read_text(encoding="utf-8-sig")
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise AlexfeatError(f"{list_path} lists no images")
    dialect = "excel-tab" if "\t" in lines[0] else "excel"
    rows = [[cell.strip() for cell in row] for row in csv.reader(lines, dialect=dialect)]
    if len(rows[0]) == 1 and " " in rows[0][0] and not (list_path.parent / rows[0][0]).exists():
        rows = [line.split() for line in lines]
    if rows[0] and rows[0][0].lower() in {"path", "file", "filename", "image"}:
        rows = rows[1:]
    root = list_path.parent
    paths = [row[0] for row in rows]
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise AlexfeatError(f"{list_path} names a file that does not exist: {root / missing[0]}{more}")
    names = [row[1] if len(row) > 1 and row[1] else None for row in rows]
    classes = tuple(sorted({n for n in names if n is not None}))
    _check_case(classes, f"labels in {list_path}")
    index = {name: i for i, name in enumerate(classes)}
    labels = tuple(index[n] if n is not None else -1 for n in names)
    unlabelled = labels.count(-1)
    warnings = (f"{unlabelled} of {len(labels)} rows of {list_path.name} have no label: stored as -1 "
                f"(unlabelled)",) if classes and unlabelled else ()
    return ImageList(root, tuple(paths), labels, classes, warnings)


def _list_files(sources: list[Path]) -> ImageList:
    """Image files and folders, unlabelled, in the order given: a folder stands for the images below it."""
    paths: list[str] = []
    for source in map(Path, sources):
        if source.is_dir():
            found = _images_below(source, source)
            if not found:
                raise AlexfeatError(f"{source} holds no image files (looked recursively for "
                                    f"{', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += [p.as_posix() for p in found]
        elif _is_file_or_broken_link(source):
            paths.append(source.as_posix())
        elif source.exists():
            raise AlexfeatError(f"{source} is not a file or a folder")
        else:
            raise AlexfeatError(f"{source} does not exist")
    return ImageList(Path("."), tuple(paths), (-1,) * len(paths), ())
