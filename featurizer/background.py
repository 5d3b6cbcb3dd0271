"""A worker thread fed through a bounded queue: keeps HDF5 writes off the forward-pass thread."""

from __future__ import annotations

import queue
import threading
from typing import Callable, Generic, TypeVar

__all__ = ["BackgroundWriter"]

T = TypeVar("T")
_STOP = object()


class BackgroundWriter(Generic[T]):
    """Calls ``handle(item)`` in one thread, in the order items were put.

    ``put`` blocks while ``depth`` items wait, so a slow disk slows the producer instead of filling
    memory. An exception raised by ``handle`` is raised again, as the same object, by the next
    ``put`` or by leaving the ``with`` block; items after it are dropped. Used as a context
    manager: leaving the block normally waits until every item is handled; leaving it with an
    exception drops the items still waiting and waits for the one being handled.
    """

    def __init__(self, handle: Callable[[T], None], depth: int = 4):
        self._handle = handle
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name="alexfeat-writer", daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __enter__(self) -> "BackgroundWriter[T]":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._cancelled = True
        self._queue.put(_STOP)  # never blocks for long: the thread keeps taking items, dropping them once failed
        self._thread.join()
        if exc_type is None:
            self._raise_if_failed()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is None and not self._cancelled:
                try:
                    self._handle(item)
                except BaseException as exc:  # handed to the producer thread, which raises it
                    self._error = exc

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
