"""The inference worker: one thread that owns the model and runs queued images in batches.

Dynamic batching as Triton and LitServe do it: the worker takes up to ``max_batch`` waiting images
at once, and holds a batch open at most ``max_wait_s`` after its oldest image arrived. Requests
are admitted whole or not at all, so the queue never holds more than ``max_queue`` images.
No torch and no HTTP here: the model is whatever ``load`` returns (it needs ``run(inputs)``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Batcher", "QueueFull"]


class QueueFull(Exception):
    """No room in the queue for a request's images."""


@dataclass
class _Item:
    input: Any
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """Loads the model in its own thread, then serves the queue until stopped.

    ``on_batch(size, seconds)`` is called after each forward pass; ``on_failure(exc)`` if loading
    fails (the exception is also kept in ``error``).
    """

    def __init__(self, load: Callable[[], Any], max_batch: int, max_wait_s: float, max_queue: int,
                 on_batch: Callable[[int, float], None] = lambda size, seconds: None,
                 on_failure: Callable[[BaseException], None] = lambda exc: None):
        self.load, self.max_batch, self.max_wait_s, self.max_queue = load, max_batch, max_wait_s, max_queue
        self.on_batch, self.on_failure = on_batch, on_failure
        self.model: Any = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self._pending: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._draining = False
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="alexfeat-inference", daemon=True)

    @property
    def depth(self) -> int:
        """Images waiting for the worker."""
        return len(self._pending)

    def start(self) -> None:
        self._thread.start()

    def submit(self, inputs: list[Any]) -> list[asyncio.Future]:
        """Queue ``inputs`` (all or none; raises QueueFull); each future resolves to its result or exception."""
        loop = asyncio.get_running_loop()
        items = [_Item(x, loop.create_future(), loop) for x in inputs]
        with self._cond:
            if len(self._pending) + len(items) > self.max_queue:
                raise QueueFull
            self._pending.extend(items)
            self._cond.notify()
        return [item.future for item in items]

    def drain(self) -> None:
        """Stop holding batches open: what is queued runs at once (the server is shutting down)."""
        with self._cond:
            self._draining = True
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Drain, let the worker finish what is queued, and wait for it."""
        with self._cond:
            self._draining = self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _work(self) -> None:
        try:
            self.model = self.load()
        except BaseException as exc:  # reported to the server, which exits with it
            self.error = exc
            self.on_failure(exc)
            return
        self.ready.set()
        while (batch := self._next_batch()) is not None:
            live = [item for item in batch if not item.future.done()]  # skip requests that timed out
            if live:
                self._run(live)

    def _next_batch(self) -> list[_Item] | None:
        with self._cond:
            while not self._pending:
                if self._stopping:
                    return None
                self._cond.wait()
            deadline = self._pending[0].arrived + self.max_wait_s
            while len(self._pending) < self.max_batch and not self._draining:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]

    def _run(self, batch: list[_Item]) -> None:
        start = time.perf_counter()
        try:
            results = self.model.run([item.input for item in batch])
        except Exception as exc:  # a bug in the model side: every request of this batch answers 500
            results = [exc] * len(batch)
        self.on_batch(len(batch), time.perf_counter() - start)
        for item, result in zip(batch, results):
            item.loop.call_soon_threadsafe(_resolve, item.future, result)


def _resolve(future: asyncio.Future, result: Any) -> None:
    if future.done():  # the request gave up (timeout) while its batch ran
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
