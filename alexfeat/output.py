"""The one rule for every file a command writes.

- an existing output is replaced only with ``--overwrite``;
- an output is never one of the command's inputs (compared as files: another spelling, ``..``,
  a symlink or a hard link to an input is still that input), not even with ``--overwrite``;
- missing parent folders are created;
- the file is written beside the target and renamed when complete (``atomic.atomic_output``),
  and a full disk or an unwritable folder is one clear line, with nothing partial left.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterable

from alexfeat.errors import AlexfeatError

__all__ = ["check_output", "check_outputs", "refuse_input", "same_file", "make_parents", "cannot_write", "WRITE_ERRNOS"]

# Failures of the place being written, which the user can fix; any other OSError is a bug to surface.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS}


def same_file(a: Path | str, b: Path | str) -> bool:
    """Whether two paths name one file: the same inode, or the same fully resolved path."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:  # one of them does not exist (yet)
        pass
    return Path(a).resolve() == Path(b).resolve()


def check_output(path: Path | str, *, overwrite: bool, inputs: Iterable[Path | str | None] = (),
                 flag: str = "--overwrite") -> Path:
    """Refuse ``path`` if it is one of ``inputs`` or exists without ``overwrite``; create its parents.

    Call it before the work starts, so a refusal costs nothing.
    """
    path = Path(path)
    refuse_input(path, inputs)
    if path.is_dir():
        raise AlexfeatError(f"output {path} is a folder: name a file")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise AlexfeatError(f"{path} exists: pass {flag} to replace it")
    make_parents(path)
    return path


def refuse_input(path: Path | str, inputs: Iterable[Path | str | None]) -> None:
    """AlexfeatError if the output ``path`` is one of ``inputs``, whatever ``--overwrite`` says."""
    for source in inputs:
        if source is not None and same_file(path, source):
            raise AlexfeatError(f"output {path} is also an input ({source}): choose another output path")


def check_outputs(outputs: Iterable[Path | str | None], *, overwrite: bool,
                  inputs: Iterable[Path | str | None] = ()) -> None:
    """``check_output`` for each given output, and no two outputs the same file."""
    given = [Path(p) for p in outputs if p is not None]
    for i, path in enumerate(given):
        for other in given[:i]:
            if same_file(path, other):
                raise AlexfeatError(f"two outputs are the same file ({other} and {path}): give each its own path")
    inputs = list(inputs)
    for path in given:
        check_output(path, overwrite=overwrite, inputs=inputs)


def make_parents(path: Path) -> None:
    """Create the missing folders above ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(path.parent, exc) from None


def cannot_write(path: Path | str, exc: OSError) -> Exception:
    """The user's version of an OSError met while writing ``path``; other OSErrors are returned as they are."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return AlexfeatError(f"cannot write {path}: the disk is full ({exc.strerror}); free some space or "
                             f"write elsewhere, then run the command again")
    if exc.errno in WRITE_ERRNOS:
        return AlexfeatError(f"cannot write {path}: {exc.strerror}; choose a folder you can write to")
    if isinstance(exc, FileExistsError) or exc.errno == errno.ENOTDIR:
        return AlexfeatError(f"cannot write {path}: a file stands where a folder is needed ({exc.filename})")
    return exc
