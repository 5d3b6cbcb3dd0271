"""The featurize stage: images -> network activations -> HDF5 store, resumable."""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from featurizer import __version__
from featurizer.decode import ImageDataset, Preprocess, make_loader
from featurizer.errors import AlexfeatError
from featurizer.extract import LayerExtractor
from featurizer.images import ImageList, list_images
from featurizer.models import Arch, LoadedModel, layer_nodes, load_model
from featurizer.progress import progress_bar
from featurizer.store import Progress, StoreWriter, partial_path, progress_path

__all__ = ["FeaturizeConfig", "FeaturizeResult", "featurize", "default_layers", "resolve_device",
           "apply_overrides", "build_extractor", "Featurizer", "extract_features"]


@dataclass(frozen=True)
class FeaturizeConfig:
    """Every setting of a featurize run; the CLI builds one and calls ``featurize``."""

    images: Path
    out: Path
    model: str = "alexnet"
    weights: str = "imagenet"
    layers: tuple[str, ...] = ()  # empty: default_layers(model)
    pool: str = "none"
    dtype: str = "float32"
    batch_size: int = 64
    workers: int | None = None  # None: chosen from the CPU count and device
    device: str = "auto"
    seed: int = 0
    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    overwrite: bool = False
    resume: bool = False
    quiet: bool = False
    download: bool = True


@dataclass(frozen=True)
class FeaturizeResult:
    out: Path
    rows: int
    skipped: list[tuple[str, str]]
    seconds: float
    bytes: int

    @property
    def images_per_second(self) -> float:
        return (self.rows + len(self.skipped)) / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        return (f"wrote {self.rows} images to {self.out} ({len(self.skipped)} skipped) in {self.seconds:.1f} s: "
                f"{self.images_per_second:.1f} images/s, {self.bytes / 1e6:.1f} MB")


def default_layers(model: str) -> tuple[str, ...]:
    return ("pool5", "fc6", "fc7") if model == "alexnet" else ("pre_logits",)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AlexfeatError("--device cuda asked for, but PyTorch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise AlexfeatError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def default_workers(device: torch.device) -> int:
    cores = os.cpu_count() or 1
    # On the CPU the network competes with decoding for the same cores; decoding is ~6% of AlexNet's work.
    return min(8, cores) if device.type == "cuda" else max(1, min(4, cores // 2))


def apply_overrides(pre: Preprocess, resize: int | None = None, crop: int | None = None,
                    mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> Preprocess:
    changes = {k: v for k, v in dict(resize=resize, crop=crop, mean=mean, std=std).items() if v is not None}
    for key in ("mean", "std"):
        if key in changes and len(changes[key]) != pre.channels:
            raise AlexfeatError(f"--{key} needs {pre.channels} comma-separated values, got {len(changes[key])}")
    if "crop" in changes and "resize" not in changes:
        changes["resize"] = max(changes["crop"], round(changes["crop"] * pre.resize / pre.crop))
    return replace(pre, **changes)


class Featurizer:
    """A loaded network cut at the requested layers, ready for uint8 image batches."""

    def __init__(self, loaded: LoadedModel, layers: tuple[str, ...], pre: Preprocess, pool: str, device: torch.device):
        if pool not in ("none", "avg", "max"):
            raise AlexfeatError(f"unknown --pool {pool!r}: use none, avg or max")
        self.loaded, self.layers, self.pre, self.device = loaded, layers, pre, device
        nodes = layer_nodes(loaded.net, loaded.arch.model, list(layers))
        self.module = LayerExtractor(loaded.net, nodes, pre, pool).to(device).eval()
        # oneDNN's convolutions are ~1.5x faster in channels-last on the CPU; cuDNN prefers it too.
        self.module = self.module.to(memory_format=torch.channels_last)
        self.dims = {layer: out.shape[1] for layer, out in self(torch.zeros(1, pre.channels, pre.crop, pre.crop,
                                                                            dtype=torch.uint8)).items()}

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        with autocast:
            out = self.module(images)
        return {layer: x.float().cpu().numpy() for layer, x in out.items()}


def build_extractor(model: str, weights: str, layers: tuple[str, ...], pool: str, device: torch.device,
                    seed: int = 0, download: bool = True, overrides: dict | None = None) -> Featurizer:
    """Load ``model`` with ``weights`` and cut it at ``layers`` (preprocessing overrides optional)."""
    loaded = load_model(Arch(model=model), weights, seed=seed, download=download)
    pre = apply_overrides(loaded.preprocess, **(overrides or {}))
    return Featurizer(loaded, layers or default_layers(model), pre, pool, device)


def featurize(config: FeaturizeConfig) -> FeaturizeResult:
    """Run a featurize job described by ``config``; see the README for the store format."""
    out = Path(config.out)
    _check_output(config, out)
    images = list_images(config.images)
    device = resolve_device(config.device)
    if config.dtype not in ("float32", "float16"):
        raise AlexfeatError(f"unknown --dtype {config.dtype!r}: use float32 or float16")
    started = time.perf_counter()
    loaded = load_model(Arch(model=config.model), config.weights, seed=config.seed, download=config.download)
    pre = apply_overrides(loaded.preprocess, config.resize, config.crop, config.mean, config.std)
    progress = _progress_to_resume(config, out)
    workers = default_workers(device) if config.workers is None else config.workers
    dataset = ImageDataset(images.files, pre, indices=range(progress.next_index if progress else 0, len(images)))
    # Workers start decoding now, while the network is traced and the store is created.
    batches = iter(make_loader(dataset, config.batch_size, workers, pin_memory=device.type == "cuda"))
    fz = Featurizer(loaded, config.layers or default_layers(config.model), pre, config.pool, device)
    attrs = store_attributes(config, fz, images)
    writer, progress = _open_writer(out, len(images), fz.dims, config.dtype, attrs,
                                    _fingerprint(attrs, images, config.batch_size), progress)
    try:
        _run_batches(fz, batches, len(images), writer, progress, out, config)
    finally:
        writer.close()
    seconds = time.perf_counter() - started
    if progress.rows == 0:
        partial_path(out).unlink(missing_ok=True)
        progress_path(out).unlink(missing_ok=True)
        first = progress.skipped[0][1] if progress.skipped else "no input"
        raise AlexfeatError(f"none of the {len(images)} images could be decoded (first reason: {first})")
    _finish(out, images, progress)
    skipped = [(images.paths[i], reason) for i, reason in progress.skipped]
    return FeaturizeResult(out, progress.rows, skipped, seconds, out.stat().st_size)


def store_attributes(config: FeaturizeConfig, fz: Featurizer, images: ImageList) -> dict:
    return {
        "classes": json.dumps(list(images.classes)),
        "model": config.model,
        "weights": fz.loaded.weights_id,
        "layers": json.dumps(list(fz.layers)),
        "preprocess": fz.pre.to_json(),
        "options": json.dumps({"pool": config.pool, "dtype": config.dtype, "arch": fz.loaded.arch.to_dict()}),
        "alexfeat_version": __version__,
        "torch_version": str(torch.__version__),
        "source": str(Path(config.images).resolve()),
    }


def _check_output(config: FeaturizeConfig, out: Path) -> None:
    if config.overwrite and config.resume:
        raise AlexfeatError("--overwrite and --resume exclude each other")
    if not out.parent.is_dir():
        raise AlexfeatError(f"output folder {out.parent} does not exist")
    if out.exists() and not config.overwrite:
        if config.resume:
            raise AlexfeatError(f"{out} is already complete; nothing to resume")
        raise AlexfeatError(f"{out} exists: pass --overwrite to replace it")
    if partial_path(out).exists() and not (config.resume or config.overwrite):
        raise AlexfeatError(f"an interrupted run left {partial_path(out)}: pass --resume to continue it, "
                            f"or --overwrite to start again")


def _fingerprint(attrs: dict, images: ImageList, batch_size: int) -> str:
    h = hashlib.sha256()
    stable = {k: v for k, v in attrs.items() if k not in ("alexfeat_version",)}
    h.update(json.dumps([stable, batch_size], sort_keys=True).encode())
    h.update("\n".join(images.paths).encode())
    return h.hexdigest()


def _progress_to_resume(config: FeaturizeConfig, out: Path) -> Progress | None:
    """The saved progress of an interrupted run, when resuming one; None to start afresh."""
    if config.resume and progress_path(out).exists() and partial_path(out).exists():
        return Progress.load(progress_path(out))
    return None


def _open_writer(out: Path, n: int, dims: dict[str, int], dtype: str, attrs: dict, fingerprint: str,
                 progress: Progress | None) -> tuple[StoreWriter, Progress]:
    if progress is not None:
        if progress.fingerprint != fingerprint:
            raise AlexfeatError(f"cannot resume {partial_path(out)}: it was started with other options, "
                                f"batch size or images; rerun with the same options, or --overwrite")
        return StoreWriter.reopen(out), progress
    progress_path(out).unlink(missing_ok=True)
    writer = StoreWriter.create(out, n, dims, dtype, attrs)
    progress = Progress(fingerprint)
    progress.save(progress_path(out))
    return writer, progress


def _run_batches(fz: Featurizer, batches, total: int, writer: StoreWriter, progress: Progress, out: Path,
                 config: FeaturizeConfig) -> None:
    ppath = progress_path(out)
    with progress_bar(total, "featurize", not config.quiet, done=progress.next_index) as advance:
        for batch, feats in _computed(fz, batches, config.dtype):
            if batch.indices:
                writer.write_rows(progress.rows, feats)
                writer.flush()
            progress.rows += len(batch.indices)
            progress.skipped += batch.failures
            progress.next_index = max(batch.indices + [i for i, _ in batch.failures]) + 1
            progress.save(ppath)
            advance(len(batch.indices) + len(batch.failures))


def _computed(fz: Featurizer, batches, dtype: str):
    """Yield (batch, {layer: [B, D] array in ``dtype``}) for each decoded batch."""
    for batch in batches:
        feats = fz(batch.images) if batch.indices else {}
        yield batch, {k: v.astype(dtype, copy=False) for k, v in feats.items()}


def extract_features(fz: Featurizer, images: ImageList, dtype: str = "float32", batch_size: int = 64,
                     workers: int | None = None, quiet: bool = True
                     ) -> tuple[list[int], dict[str, np.ndarray], list[tuple[int, str]]]:
    """Featurize ``images`` in memory: (indices of decoded images, {layer: [n, D]}, [(index, reason)])."""
    workers = default_workers(fz.device) if workers is None else workers
    loader = make_loader(ImageDataset(images.files, fz.pre), batch_size, workers, fz.device.type == "cuda")
    indices, parts, failures = [], {layer: [] for layer in fz.layers}, []
    with progress_bar(len(images), "featurize", not quiet) as advance:
        for batch, feats in _computed(fz, loader, dtype):
            indices += batch.indices
            failures += batch.failures
            for layer, values in feats.items():
                parts[layer].append(values)
            advance(len(batch.indices) + len(batch.failures))
    empty = {layer: np.empty((0, fz.dims[layer]), dtype=dtype) for layer in fz.layers}
    return indices, {k: np.concatenate(v) if v else empty[k] for k, v in parts.items()}, failures


def _finish(out: Path, images: ImageList, progress: Progress) -> None:
    skipped = {i for i, _ in progress.skipped}
    kept = [i for i in range(len(images)) if i not in skipped]
    writer = StoreWriter.reopen(out)
    writer.finish(
        progress.rows,
        [images.paths[i] for i in kept],
        [images.labels[i] for i in kept],
        [(images.paths[i], reason) for i, reason in progress.skipped],
    )
    progress_path(out).unlink(missing_ok=True)
