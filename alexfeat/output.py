"""The one rule for every file a command writes.

- an existing output is replaced only with ``--overwrite``;
- an output is never one of the command's inputs (compared as files: another spelling, ``..``,
  a symlink or a hard link to an input is still that input), not even with ``--overwrite``;
- missing parent folders are created;
- the file is written beside the target and renamed when complete (``atomic.atomic_output``),
  and a full disk or an unwritable folder is one clear line, with nothing partial left;
- a file whose size is known before it is written (a feature store) is refused up front when the disk
  holding it has less room (``check_free_space``).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path
from typing import Iterable

from alexfeat.errors import AlexfeatError

__all__ = ["check_output", "check_outputs", "refuse_input", "same_file", "make_parents", "cannot_write", "WRITE_ERRNOS",
           "CannotWrite", "write_error", "check_free_space"]

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


class CannotWrite(AlexfeatError):
    """Writing ``path`` failed for a reason of the place written (full, read-only, not permitted), said in
    one line; ``again`` is how to go on once it has room (``resumed`` gives another)."""

    def __init__(self, path: Path | str, code: int, again: str = "run the command again"):
        self.path, self.errno, self.again = Path(path), code, again
        reason = os.strerror(code)
        if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            text = f"the disk is full ({reason}); free some space or write elsewhere, then {again}"
        else:
            text = f"{reason}; choose a folder you can write to, then {again}"
        super().__init__(f"cannot write {path}: {text}")

    def resumed(self, again: str) -> "CannotWrite":
        return CannotWrite(self.path, self.errno, again)

    def __reduce__(self):  # raised in a Ray task, it travels pickled
        return CannotWrite, (self.path, self.errno, self.again)


def cannot_write(path: Path | str, exc: BaseException, again: str = "run the command again") -> Exception:
    """The user's version of a failure met while writing ``path`` (an OSError, or h5py's ValueError or
    RuntimeError that carries "errno = N"); any other failure is returned as it is."""
    if isinstance(exc, CannotWrite):
        return exc
    error = write_error(exc)
    if error is not None:
        return CannotWrite(path, error.errno, again)
    if isinstance(exc, OSError) and (isinstance(exc, FileExistsError) or exc.errno == errno.ENOTDIR):
        return AlexfeatError(f"cannot write {path}: a file stands where a folder is needed ({exc.filename})")
    return exc


# h5py reports the C library's write failures as OSError, ValueError or RuntimeError with the
# error number only in the text: "... (file write failed: ..., errno = 28, error message = ...)".
_ERRNO_IN_TEXT = re.compile(r"errno = (\d+)")


def write_error(exc: BaseException) -> OSError | None:
    """The OSError of the place being written behind ``exc`` (full, read-only, not permitted), or None."""
    code = exc.errno if isinstance(exc, OSError) and exc.errno is not None else None
    if code is None and isinstance(exc, (OSError, ValueError, RuntimeError)):
        found = _ERRNO_IN_TEXT.findall(str(exc))
        code = int(found[-1]) if found else None
    if code not in WRITE_ERRNOS:
        return None
    return OSError(code, os.strerror(code))


def check_free_space(path: Path | str, needed: int, note: str = "") -> None:
    """AlexfeatError, before anything is written, when the file system holding ``path`` has fewer than
    ``needed`` bytes free; ``note`` says more of ``needed`` (e.g. that it is an upper bound)."""
    path = Path(path)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return  # the write itself will say what is wrong with the folder
    if needed > free:
        raise AlexfeatError(f"cannot write {path}: it needs {_size(needed)}{note} and the disk holding it has "
                            f"{_size(free)} free; free some space or write elsewhere")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
