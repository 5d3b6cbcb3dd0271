"""The HTTP side: FastAPI routes, limits and errors around a Batcher. No torch here.

The model behind the batcher is only used through ``decode(bytes)`` (in a thread pool),
``run(inputs)`` (by the batcher's worker), ``describe()`` and ``classes``.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import io
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.formparsers import MultiPartException, MultiPartParser
from swagger_ui_bundle import swagger_ui_path

from alexfeat import __version__
from alexfeat.serve.batcher import Batcher, QueueFull
from alexfeat.serve.config import BadImage, Result, ServeConfig
from alexfeat.serve.metrics import Metrics, ObserveRequests

__all__ = ["create_app"]

NPY = "application/x-npy"
RETRY = {"Retry-After": "1"}
ENDPOINTS = {"/healthz", "/readyz", "/metrics", "/v1/model", "/v1/predict", "/v1/features", "/docs", "/openapi.json"}
_IMAGE_BODY = {"content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
}, "required": True}


def create_app(config: ServeConfig, batcher: Batcher, metrics: Metrics) -> FastAPI:
    """The service: ``batcher`` is started and stopped with the app (its worker loads the model)."""
    decoder = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="alexfeat-decode")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        # uvicorn has already waited for in-flight requests; this lets the worker finish and exit.
        await asyncio.to_thread(batcher.stop, config.timeout_s)
        decoder.shutdown(wait=False, cancel_futures=True)

    # /docs is served with its Swagger UI assets from a package, not a CDN: it works offline. (ReDoc,
    # which only a CDN would bring, is left out.)
    app = FastAPI(title="alexfeat", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Class predictions and CNN features for images, batched onto one model.")
    _add_docs(app)

    @app.get("/healthz", summary="The process is up.")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="200 once the model is loaded and a warm-up batch has run; 503 before.")
    async def readyz() -> JSONResponse:
        if batcher.ready.is_set():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "failed" if batcher.error else "loading"}, 503, headers=RETRY)

    @app.get("/metrics", summary="Prometheus metrics.")
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @functools.cache
    def served_layers() -> list[str]:
        return list(batcher.model.describe()["layers"])

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(_api_key_check(config.api_key)), Depends(_ready_check(batcher))])

    @v1.get("/model", summary="What is served: model, weights and their sha256, layers, classes, preprocessing.")
    async def model_info() -> dict:
        return batcher.model.describe()

    @v1.post("/predict", openapi_extra={"requestBody": _IMAGE_BODY},
             summary="Class and probabilities for one image (raw body) or several (multipart `files`).")
    async def predict(request: Request) -> Response:
        if not batcher.model.classes:
            raise HTTPException(404, "this server serves features only (no classifier): use /v1/features")
        names, answers = await _answer(request)
        classes = batcher.model.classes
        body = [_prediction(a, classes) if isinstance(a, Result) else {"error": a} for a in answers]
        if names is None:
            return JSONResponse(body[0])
        return JSONResponse([{"file": name, **b} for name, b in zip(names, body)])

    @v1.post("/features", openapi_extra={"requestBody": _IMAGE_BODY},
             summary="Features at one layer: JSON floats, or a .npy body with `Accept: application/x-npy`.")
    async def features(request: Request, layer: str | None = Query(None, description="Default: the first "
                                                                                      "layer served.")) -> Response:
        layers = served_layers()
        layer = layer or layers[0]
        if layer not in layers:
            raise HTTPException(422, f"layer {layer!r} is not served; this server has {', '.join(layers)}")
        names, answers = await _answer(request)
        if NPY in request.headers.get("accept", ""):
            if bad := [f"{n}: {a}" for n, a in zip(names or ["body"], answers) if not isinstance(a, Result)]:
                raise HTTPException(422, "; ".join(bad))
            rows = [a.features[layer] for a in answers]
            buffer = io.BytesIO()
            np.save(buffer, rows[0] if names is None else np.stack(rows))
            return Response(buffer.getvalue(), media_type=NPY)
        body = [{"layer": layer, "features": a.features[layer].tolist()} if isinstance(a, Result) else {"error": a}
                for a in answers]
        if names is None:
            return JSONResponse(body[0])
        return JSONResponse([{"file": name, **b} for name, b in zip(names, body)])

    async def _answer(request: Request) -> tuple[list[str] | None, list[Result | str]]:
        """Read, decode and run the request's images: (file names or None for a raw body, results or reasons)."""
        names, blobs = await _read_images(request, config.max_body_bytes, config.max_queue)
        loop = asyncio.get_running_loop()
        decoded = await asyncio.gather(*(loop.run_in_executor(decoder, _decode, batcher.model, b) for b in blobs))
        good = [x for x in decoded if not isinstance(x, BadImage)]
        metrics.bad_images.inc(len(decoded) - len(good))
        if names is None and not good:
            raise HTTPException(422, f"not a decodable image: {decoded[0]}")
        try:
            futures = batcher.submit(good)
        except QueueFull:
            raise HTTPException(503, "the server is busy (queue full); retry", headers=RETRY) from None
        try:
            results = iter(await asyncio.wait_for(asyncio.gather(*futures), config.timeout_s))
        except asyncio.TimeoutError:
            raise HTTPException(504, f"no answer from the model within {config.timeout_s:g} s") from None
        return names, [str(x) if isinstance(x, BadImage) else next(results) for x in decoded]

    app.include_router(v1)
    app.add_middleware(ObserveRequests, metrics=metrics, endpoints=ENDPOINTS)
    return app


DOCS_ASSETS = "/docs/assets"


def _add_docs(app: FastAPI) -> None:
    """GET /docs: the Swagger UI page, its script, style and icon served from the swagger-ui-bundle-v2 package."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
                                   # no badge fetched from Swagger's online validator
                                   swagger_ui_parameters={"validatorUrl": None})


def _decode(model, data: bytes):
    try:
        return model.decode(data)
    except BadImage as exc:
        return exc


def _prediction(result: Result, classes: list[str]) -> dict:
    scores = result.scores
    return {"label": classes[int(scores.argmax())], "scores": {c: float(p) for c, p in zip(classes, scores)}}


async def _read_images(request: Request, limit: int, max_files: int) -> tuple[list[str] | None, list[bytes]]:
    """The images of a raw body (names None) or of multipart ``files`` fields, refusing bodies over ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        # Answered before reading a byte of the body: uvicorn then closes the connection.
        raise HTTPException(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
    stream = _limited(request.stream(), limit)
    kind = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        try:
            form = await MultiPartParser(request.headers, stream, max_files=max_files, max_fields=100).parse()
        except MultiPartException as exc:
            raise HTTPException(400, f"malformed multipart body: {exc.message}") from None
        try:  # the uploads are spooled temporary files: closed here, not left to the garbage collector
            files = [f for f in form.getlist("files") if not isinstance(f, str)]
            if not files:
                raise HTTPException(422, "a multipart request needs one or more fields named 'files' holding images")
            return [f.filename or "" for f in files], [await f.read() for f in files]
        finally:
            await form.close()
    if not (kind.startswith("image/") or kind == "application/octet-stream"):
        raise HTTPException(415, f"send an image as the body (Content-Type image/* or application/octet-stream) "
                                 f"or images as multipart/form-data fields 'files', not {kind}")
    body = b"".join([chunk async for chunk in stream])
    if not body:
        raise HTTPException(422, "the request body is empty: send the image's bytes")
    return None, [body]


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """``stream``, stopped with 413 as soon as it passes ``limit`` bytes (bodies without a Content-Length)."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise HTTPException(413, f"request body is over the limit of {limit} bytes")
        yield chunk


def _api_key_check(key: str | None) -> Callable:
    async def check(request: Request) -> None:
        if key is None:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise HTTPException(401, "missing or wrong API key: send it as 'Authorization: Bearer KEY' or "
                                     "'X-API-Key: KEY'", headers={"WWW-Authenticate": "Bearer"})
    return check


def _ready_check(batcher: Batcher) -> Callable:
    async def check() -> None:
        if not batcher.ready.is_set():
            raise HTTPException(503, "the model is still loading; retry", headers=RETRY)
    return check
