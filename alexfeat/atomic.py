"""Write a file completely or not at all: a temporary file beside it, then a rename."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alexfeat.figures import figure_format
from alexfeat.output import cannot_write

__all__ = ["atomic_output", "atomic_write_text", "atomic_savefig"]


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is synced and renamed to ``path``.

    On any failure (a full disk, Ctrl-C) the temporary file is removed and ``path`` is left as it
    was; an OSError of the folder being written (full, read-only) becomes an AlexfeatError.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise cannot_write(path, exc) from None
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode())  # mkstemp makes files private (0600); give the usual mode
        os.replace(tmp, path)
    except OSError as exc:
        raise cannot_write(path, exc) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def atomic_savefig(fig, path: Path, **kwargs) -> None:
    """``fig.savefig`` through a temporary file, in ``figures.figure_format(path)``."""

    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=figure_format(path), **kwargs)
