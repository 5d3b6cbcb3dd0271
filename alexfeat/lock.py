"""An exclusive lock held by one run on one output (a store, a run folder), across processes."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from alexfeat.errors import AlexfeatError
from alexfeat.output import cannot_write

__all__ = ["RunLock"]

# flock belongs to the open file, which forked children (DataLoader workers) share: a child that
# outlives a killed parent for a moment would keep holding it. Children close their copies.
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunLock:
    """``with RunLock(path, what):`` holds an exclusive ``flock`` on the file ``path``.

    A second holder, in any process, is refused at once with an AlexfeatError naming ``what``.
    The operating system drops the lock when its process dies (kill -9 included), so a crash
    never leaves a stale lock; the lock file is removed on a clean release.
    """

    def __init__(self, path: Path | str, what: str):
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise cannot_write(self.path, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise AlexfeatError(f"another run is writing {self.what} (it holds {self.path}); wait for it "
                                    f"to finish, or stop it first") from None
            # The previous holder may have removed the file between our open and our lock: then we
            # hold a lock on a file nobody else can find, so start again on the current one.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    self._fd = fd
                    _HELD.add(fd)
                    return self
            except FileNotFoundError:
                pass
            os.close(fd)

    @staticmethod
    def is_held(path: Path | str) -> bool:
        """Whether a live process holds the lock at ``path`` (without taking it)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # drops our probe's shared lock, if it got one

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it, so no one locks a removed file
        finally:
            _HELD.discard(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
