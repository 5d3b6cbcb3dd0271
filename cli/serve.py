"""``alexfeat serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alexfeat.cli.common import (Device, PrecisionOpt, Tta, TtaOpt, handle_errors, parse_floats,
                                 parse_names, refuse, side_option)
from alexfeat.cli.featurize import ModelOpt, Pool
from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.sources.folders import DEFAULT_MAX_PIXELS
from alexfeat.paths import existing_file, model_kind
from alexfeat.progress import stderr
from alexfeat.serve.config import ServeConfig

# FastAPI, uvicorn and torch are imported inside the command: --help answers at once.


@handle_errors
def serve_cli(
    ctx: typer.Context,
    model_file: Annotated[Optional[Path], typer.Argument(
        metavar="MODEL", help="A .joblib model from fit-*, or a trainer checkpoint (.pt); none with --features-only.")
    ] = None,
    weights: Annotated[Optional[str], typer.Option(help="The weights file a .joblib model's features came from; "
                                                        "with --features-only: imagenet (default), none or a file.")
                       ] = None,
    features_only: Annotated[bool, typer.Option("--features-only", help="Serve features of --model at --layers, "
                                                                        "no classifier.")] = False,
    model: ModelOpt = "alexnet",
    layers: Annotated[Optional[str], typer.Option(help="With --features-only: comma-separated layers "
                                                       "(default alexnet: pool5,fc6,fc7; others: pre_logits).")] = None,
    pool: Annotated[Pool, typer.Option(help="With --features-only: reduce convolutional maps.")] = Pool.none,
    resize: Annotated[Optional[int], side_option("With --features-only or a checkpoint: shorter side before the "
                                                  "crop.")] = None,
    crop: Annotated[Optional[int], side_option("With --features-only or a checkpoint: centre crop size (alone: keeps "
                                                "the model's resize/crop ratio).")] = None,
    mean: Annotated[Optional[str], typer.Option(help="With --features-only: normalisation mean.")] = None,
    std: Annotated[Optional[str], typer.Option(help="With --features-only: normalisation std.")] = None,
    tta: TtaOpt = Tta.none,
    device: Annotated[Device, typer.Option(help="Where the network runs (auto: CUDA when present).")] = Device.auto,
    precision: PrecisionOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    max_batch: Annotated[int, typer.Option(min=1, help="Most images per forward pass.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(min=0, help="Longest a batch is held open for more images.")] = 5.0,
    max_queue: Annotated[int, typer.Option(min=1, help="Most images waiting; beyond it requests get 503.")] = 256,
    timeout_s: Annotated[float, typer.Option(min=0.001, help="Longest a request waits for the model (then 504).")
                         ] = 30.0,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body (then 413).")] = 20.0,
    decode_threads: Annotated[int, typer.Option(min=1, help="Threads decoding images beside the model.")] = 2,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse images with more pixels than this (422; "
                                                        "decompression-bomb guard).")] = DEFAULT_MAX_PIXELS,
    api_key_file: Annotated[Optional[Path], typer.Option(help="File holding the API key that requests to /v1 must "
                                                              "send (Authorization: Bearer KEY or X-API-Key).")
                            ] = None,
) -> None:
    """Serve a classifier, a checkpoint or a featurizer over HTTP, batching concurrent requests.

    POST /v1/predict and /v1/features take one image as the body or several as multipart 'files'.
    GET /v1/model, /healthz, /readyz and /metrics describe the service; /docs is the API page.

    Ctrl-C or SIGTERM stops accepting, answers what is queued, then exits.

    Model files are joblib (pickle) files, which run code when loaded: only serve models you trust.
    """
    from alexfeat.serve.server import serve

    overrides = {k: v for k, v in dict(resize=resize, crop=crop, mean=parse_floats(mean, "--mean"),
                                       std=parse_floats(std, "--std")).items() if v is not None}
    if features_only == (model_file is not None):
        raise AlexfeatError("give a MODEL file to serve, or --features-only (with --model and --layers), not both")
    # A folder or a file that is no model is refused here, before the option checks and the server.
    checkpoint = model_file is not None and model_kind(model_file) == "checkpoint"
    if model_file is not None:
        refuse(ctx, "with a MODEL file, which brings its own network and pooling (they go with --features-only)",
               "model", "pool")
    if model_file is not None and (set(overrides) - ({"resize", "crop"} if checkpoint else set()) or layers):
        raise AlexfeatError("--layers, --mean and --std go with --features-only (--resize and --crop also with a "
                            "checkpoint); a .joblib model brings its own layer and preprocessing")
    if checkpoint and weights is not None:
        raise AlexfeatError("a checkpoint carries its own weights: --weights goes with a .joblib model or "
                            "--features-only")
    if model_file is not None and not checkpoint and tta != Tta.none:
        raise AlexfeatError("--tta goes with a checkpoint (.pt) or --features-only; a .joblib model's features are "
                            "made as its training store's were (featurize --tta): leave it out")
    if model_file is not None:  # before the server starts
        existing_file(model_file, "model file")
    config = ServeConfig(
        model_path=model_file, weights=weights, model=model, layers=parse_names(layers), pool=pool.value,
        overrides=overrides, tta=None if tta == Tta.none else tta.value, device=device.value,
        precision=precision and precision.value, host=host, port=port, max_batch=max_batch,
        max_wait_ms=max_wait_ms, max_queue=max_queue, timeout_s=timeout_s, max_body_mb=max_body_mb,
        decode_threads=decode_threads, max_pixels=max_pixels, api_key=_read_key(api_key_file),
    )
    if host not in ("127.0.0.1", "localhost", "::1") and config.api_key is None:
        stderr.print(f"warning: listening on {host} without --api-key-file: anyone who can reach it can use it",
                     soft_wrap=True)
    serve(config)
    typer.echo("stopped")


def _read_key(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise AlexfeatError(f"cannot read the API key file {path}: {exc.strerror}") from None
    if not key:
        raise AlexfeatError(f"the API key file {path} is empty")
    return key
