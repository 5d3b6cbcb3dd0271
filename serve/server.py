"""Run the service: a Batcher whose worker loads the model, the FastAPI app around it, under uvicorn."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time

import uvicorn

from alexfeat.errors import AlexfeatError
from alexfeat.paths import model_kind
from alexfeat.serve.app import create_app
from alexfeat.serve.batcher import Batcher
from alexfeat.serve.config import ServeConfig
from alexfeat.serve.metrics import Metrics

__all__ = ["serve", "build_app"]

_log = logging.getLogger("uvicorn.error")  # uvicorn's own log: one stream, one format


def build_app(config: ServeConfig, on_failure=lambda exc: None):
    """(app, batcher); the batcher's worker loads and warms up the model when the app starts."""
    batcher = Batcher(lambda: _load(config), config.max_batch, config.max_wait_ms / 1000, config.max_queue,
                      on_failure=on_failure)
    metrics = Metrics(lambda: batcher.depth, batcher.ready.is_set)
    batcher.on_batch = metrics.observe_batch
    return create_app(config, batcher, metrics), batcher


def serve(config: ServeConfig) -> None:
    """Serve until SIGTERM or Ctrl-C: then stop accepting, answer what is queued, and return.

    Raises AlexfeatError when the port is taken or the model cannot be loaded (the server then
    stops at once).
    """
    _check_before_binding(config)
    sock = _bind(config.host, config.port)
    server: _Server | None = None
    app, batcher = build_app(config, on_failure=lambda exc: setattr(server, "should_exit", True))
    # Bodies are held in memory until their images are queued: bounding the connections bounds that
    # memory (to about this many times --max-body-mb); uvicorn answers 503 beyond it.
    connections = max(64, 2 * config.max_queue)
    server = _Server(uvicorn.Config(app, access_log=False, log_level="info", lifespan="on",
                                    limit_concurrency=connections,
                                    timeout_graceful_shutdown=int(config.timeout_s) + 5), batcher)
    # uvicorn re-raises SIGTERM after its graceful shutdown; under the default handler that would kill
    # the process (exit -15) after a clean drain. Return normally instead.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    _log.info("listening on http://%s:%s (GET /readyz answers 200 once the model is loaded)", *sock.getsockname()[:2])
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    if batcher.error is not None:
        raise batcher.error


def _check_before_binding(config: ServeConfig) -> None:
    """Refuse what the model's loading would refuse, without the network: a .joblib model whose features
    came from a weights file, served without --weights."""
    if config.model_path is None or config.weights is not None or model_kind(config.model_path) != "classifier":
        return
    from alexfeat.classifiers.model_file import ClassifierModel  # scikit-learn: only for a .joblib model
    from alexfeat.classifiers.predict import check_weights_given

    check_weights_given(ClassifierModel.load(config.model_path), None)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AlexfeatError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or --host") from None
    return sock


def _load(config: ServeConfig):
    from alexfeat.serve.model import load_served_model  # torch: only in the worker thread

    start = time.perf_counter()
    model = load_served_model(config)
    model.warm_up(config.max_batch)
    info = model.describe()
    _log.info("ready in %.1f s: %s %s, layers %s", time.perf_counter() - start, info["kind"], info["source"],
              ", ".join(info["layers"]))
    return model


class _Server(uvicorn.Server):
    """uvicorn's Server, also telling the batcher to drain as soon as a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, batcher: Batcher):
        super().__init__(config)
        self.batcher = batcher

    def handle_exit(self, sig, frame) -> None:
        # A signal handler must not wait for the batcher's lock, which the interrupted loop may hold.
        threading.Thread(target=self.batcher.drain, daemon=True).start()
        super().handle_exit(sig, frame)
