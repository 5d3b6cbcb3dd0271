"""The server's Prometheus metrics, in a registry of their own (one per app, so tests can build several)."""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics", "ObserveRequests"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, queue_depth: Callable[[], int], ready: Callable[[], bool]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("alexfeat_requests", "HTTP requests by endpoint and status.", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("alexfeat_request_seconds", "Time from request to response, by endpoint.",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("alexfeat_batch_size", "Images per forward pass.", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.batch_seconds = Histogram("alexfeat_batch_seconds", "Time of one forward pass (and classifier).",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.bad_images = Counter("alexfeat_bad_images", "Images that could not be decoded.", registry=r)
        Gauge("alexfeat_queue_depth", "Images waiting for the inference worker.",
              registry=r).set_function(queue_depth)
        Gauge("alexfeat_ready", "1 once the model is loaded and warmed up.",
              registry=r).set_function(lambda: float(ready()))

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class ObserveRequests:
    """ASGI middleware: count every response by endpoint and status, and time it."""

    def __init__(self, app, metrics: Metrics, endpoints: set[str]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            # Unknown paths share one label, so that scanners cannot grow the metric without bound.
            endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
