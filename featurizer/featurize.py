"""The featurize run: images -> network activations -> HDF5 store, resumable (the local driver)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alexfeat import __version__
from alexfeat.featurizer.background import BackgroundWriter
from alexfeat.featurizer.choices import COMPRESSIONS, DTYPES, ENGINES, check_choice
from alexfeat.featurizer.decode import DEFAULT_MAX_PIXELS, ImageDataset, Preprocess, make_loader
from alexfeat.featurizer.device import default_threads, default_workers, resolve_decode, resolve_device
from alexfeat.featurizer.device_decode import EncodedDataset, collate_encoded, decode_on_device
from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.models import LoadedModel, load_by_name
from alexfeat.featurizer.network import Featurizer, apply_overrides, default_layers
from alexfeat.featurizer.progress import progress_bar
from alexfeat.featurizer.sources import SampleList, SourceOptions, open_source
from alexfeat.featurizer.lock import RunLock
from alexfeat.featurizer.output import check_output
from alexfeat.featurizer.store import Progress, StoreWriter, lock_path, partial_path, progress_path

__all__ = ["FeaturizeConfig", "FeaturizeResult", "featurize", "write_store", "load_network", "read_source",
           "store_attributes"]


@dataclass(frozen=True)
class FeaturizeConfig:
    """Every setting of a featurize run; the CLI builds one and calls ``featurize``."""

    images: Path | str  # a folder, list, Parquet file, tar or brace pattern of tars
    out: Path | None  # the store; None with ``parts``
    model: str | None = None  # None: the checkpoint's model for a trainer checkpoint, else alexnet
    weights: str = "imagenet"
    layers: tuple[str, ...] = ()  # empty: default_layers(model)
    pool: str = "none"
    dtype: str = "float32"
    batch_size: int = 64
    workers: int | None = None  # None: chosen from the CPU count and device
    threads: int | None = None  # torch threads for the forward pass; None: chosen likewise
    device: str = "auto"
    decode: str = "auto"  # auto: JPEGs decoded on the GPU when the network runs on CUDA
    compile: bool = False  # torch.compile the network
    compression: str = "none"  # none, lzf or gzip
    seed: int = 0
    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped (decompression-bomb guard)
    overwrite: bool = False
    resume: bool = False
    quiet: bool = False
    download: bool = True
    source: SourceOptions = SourceOptions()
    shard: tuple[int, int] | None = None  # (I, N): this run's 1/N of the input
    parts: Path | None = None  # write a folder of part stores instead of ``out``
    part_size: int = 10_000
    engine: str = "local"  # local | ray
    address: str | None = None  # ray: the cluster to join (None: a local one)
    actors: int | None = None  # ray: featurizer actors (None: one per GPU, else one)
    # The store is flushed (fsync) and the resume point saved every flush_seconds or flush_batches
    # batches, whichever comes first, but at most every 0.25 s; a killed run resumes from the last one.
    flush_seconds: float = 2.0
    flush_batches: int = 16


@dataclass(frozen=True)
class FeaturizeResult:
    out: Path
    rows: int
    skipped: list[tuple[str, str]]
    seconds: float
    bytes: int
    setup: str = ""  # workers, threads and where JPEGs were decoded
    warnings: tuple[str, ...] = ()  # from listing the images (unlabelled rows, empty class folders)

    @property
    def images_per_second(self) -> float:
        return (self.rows + len(self.skipped)) / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        return (f"wrote {self.rows} images to {self.out} ({len(self.skipped)} skipped) in {self.seconds:.1f} s: "
                f"{self.images_per_second:.1f} images/s, {self.bytes / 1e6:.1f} MB" + (f" ({self.setup})" if self.setup else ""))


def featurize(config: FeaturizeConfig) -> FeaturizeResult:
    """Run a featurize job described by ``config``; see the README for the store format."""
    check_choice("--engine", config.engine, ENGINES)
    check_choice("--dtype", config.dtype, DTYPES)
    check_choice("--compression", config.compression, COMPRESSIONS)
    if config.engine == "local":  # refused before any output is made
        resolve_decode(config.decode, resolve_device(config.device))
    if config.engine == "ray" or config.parts is not None:
        if config.resume or config.overwrite:
            raise AlexfeatError("--resume and --overwrite do not apply to --parts: rerunning the command resumes "
                                "it; to start again, use a new --parts folder")
        if config.engine == "ray":
            from alexfeat.featurizer.ray_engine import featurize_ray as run
        else:
            from alexfeat.featurizer.parts import featurize_parts as run
        return run(config)
    if config.shard is not None:
        raise AlexfeatError("--shard writes part stores: add --parts DIR (merge them later with alexfeat merge)")
    if config.out is None:
        raise AlexfeatError("give an output store OUT.h5, or --parts DIR")
    out = Path(config.out)
    _check_output(config, out)
    with RunLock(lock_path(out), f"the store {out}"):
        _check_partial(config, out)
        images = read_source(config)
        device = resolve_device(config.device)
        started = time.perf_counter()
        loaded, pre = load_network(config)
        return write_store(config, out, images, loaded, pre, device, started=started)


def read_source(config: FeaturizeConfig) -> SampleList:
    return open_source(config.images, config.source, config.shard)


def load_network(config: FeaturizeConfig) -> tuple[LoadedModel, Preprocess]:
    """The network and its preprocessing with the config's overrides."""
    loaded = load_by_name(config.model, config.weights, seed=config.seed, download=config.download)
    return loaded, apply_overrides(loaded.preprocess, config.resize, config.crop, config.mean, config.std)


def write_store(config: FeaturizeConfig, out: Path, images: SampleList, loaded: LoadedModel, pre: Preprocess,
                device: torch.device, fz: Featurizer | None = None, started: float | None = None,
                extra_attrs: dict | None = None) -> FeaturizeResult:
    """Featurize ``images`` into the store ``out``, resuming its interrupted run when ``config.resume``."""
    started = time.perf_counter() if started is None else started
    progress = _progress_to_resume(config, out)
    decode = resolve_decode(config.decode, device)
    workers = default_workers(device, decode) if config.workers is None else config.workers
    threads = default_threads(device, workers) if config.threads is None else config.threads
    # Workers start decoding now, while the network is traced and the store is created.
    batches = _batches(images, pre, range(progress.next_index if progress else 0, len(images)), decode, device,
                       config.batch_size, workers, config.max_pixels)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fz = fz or Featurizer(loaded, config.layers or default_layers(loaded.arch.model), pre, config.pool, device,
                              config.compile)
        attrs = {**store_attributes(config, fz, images), "decode": decode, **(extra_attrs or {})}
        writer, progress = _open_writer(out, len(images), fz.dims, config.dtype, attrs,
                                        _fingerprint(attrs, images, config.batch_size, config.compression), progress,
                                        config.compression)
        try:
            _run_batches(fz, batches, len(images), writer, progress, out, config)
        except OSError as exc:  # h5py's word for a full disk or a vanished folder under OUT.partial
            raise AlexfeatError(f"cannot write {partial_path(out)}: {str(exc).splitlines()[0]}; the finished "
                                f"batches are kept: free some space, then run the same command with --resume") from None
        finally:
            writer.close()
    finally:
        torch.set_num_threads(previous_threads)
    seconds = time.perf_counter() - started
    if progress.rows == 0:
        partial_path(out).unlink(missing_ok=True)
        progress_path(out).unlink(missing_ok=True)
        first = progress.skipped[0][1] if progress.skipped else "no input"
        raise AlexfeatError(f"none of the {len(images)} images could be decoded (first reason: {first})")
    _finish(out, images, progress)
    skipped = [(images.paths[i], reason) for i, reason in progress.skipped]
    setup = f"{workers} decoding worker{'s' * (workers != 1)}, {threads} torch thread{'s' * (threads != 1)}, " \
            f"JPEGs decoded on the {decode.upper()}"
    return FeaturizeResult(out, progress.rows, skipped, seconds, out.stat().st_size, setup, images.warnings)


def _batches(images: SampleList, pre: Preprocess, indices: range, decode: str, device: torch.device,
             batch_size: int, workers: int, max_pixels: int):
    """Decoded uint8 batches in input order: decoded by the workers, or read by them and decoded here on the GPU."""
    if decode == "cpu":
        dataset = ImageDataset(images.files, pre, indices=indices, max_pixels=max_pixels)
        return iter(make_loader(dataset, batch_size, workers, pin_memory=device.type == "cuda",
                                worker_init_fn=_lower_priority if device.type == "cpu" and _NICE_WORKERS else None))
    dataset = EncodedDataset(images.files, pre, indices=indices, max_pixels=max_pixels)
    loader = iter(make_loader(dataset, batch_size, workers, collate_fn=collate_encoded))
    return (decode_on_device(batch, images.files, pre, device) for batch in loader)


def store_attributes(config: FeaturizeConfig, fz: Featurizer, images: SampleList) -> dict:
    return {
        "classes": json.dumps(list(images.classes)),
        "model": fz.loaded.arch.model,
        "weights": str(fz.loaded.weights_id),
        "layers": json.dumps(list(fz.layers)),
        "preprocess": fz.pre.to_json(),
        "options": json.dumps({"pool": config.pool, "dtype": config.dtype, "arch": fz.loaded.arch.to_dict()}),
        "pooling": json.dumps(fz.pooling),
        "alexfeat_version": __version__,
        "torch_version": str(torch.__version__),
        "source": images.origin,
    }


def _check_output(config: FeaturizeConfig, out: Path) -> None:
    if config.overwrite and config.resume:
        raise AlexfeatError("--overwrite and --resume exclude each other")
    if config.resume and out.exists():
        raise AlexfeatError(f"{out} is already complete; nothing to resume")
    weights = Path(config.weights) if config.weights not in ("imagenet", "none") else None
    check_output(out, overwrite=config.overwrite, inputs=(config.images, weights))


def _check_partial(config: FeaturizeConfig, out: Path) -> None:
    """Under the store's lock: an interrupted run's partial store is resumed or replaced, never lost."""
    if partial_path(out).exists() and not (config.resume or config.overwrite):
        raise AlexfeatError(f"an interrupted run left {partial_path(out)}: pass --resume to continue it, "
                            f"or --overwrite to start again")


# On the CPU the network is the limit and decoding, which runs ahead by several batches, only has
# to fill the gaps between its operators: workers at a lower priority take no core from it.
_NICE_WORKERS = True


def _lower_priority(worker_id: int) -> None:
    os.nice(5)


def _fingerprint(attrs: dict, images: SampleList, batch_size: int, compression: str = "none") -> str:
    h = hashlib.sha256()
    stable = {k: v for k, v in attrs.items() if k not in ("alexfeat_version",)}
    h.update(json.dumps([stable, batch_size, compression], sort_keys=True).encode())
    h.update("\n".join(images.paths).encode())
    return h.hexdigest()


def _progress_to_resume(config: FeaturizeConfig, out: Path) -> Progress | None:
    """The saved progress of an interrupted run, when resuming one; None to start afresh."""
    if config.resume and progress_path(out).exists() and partial_path(out).exists():
        return Progress.load(progress_path(out))
    return None


def _open_writer(out: Path, n: int, dims: dict[str, int], dtype: str, attrs: dict, fingerprint: str,
                 progress: Progress | None, compression: str = "none") -> tuple[StoreWriter, Progress]:
    if progress is not None:
        if progress.fingerprint != fingerprint:
            raise AlexfeatError(f"cannot resume {partial_path(out)}: it was started with other options, "
                                f"batch size or images; rerun with the same options, or --overwrite")
        return StoreWriter.reopen(out), progress
    progress_path(out).unlink(missing_ok=True)
    writer = StoreWriter.create(out, n, dims, dtype, attrs, compression)
    progress = Progress(fingerprint)
    progress.save(progress_path(out))
    return writer, progress


def _run_batches(fz: Featurizer, batches, total: int, writer: StoreWriter, progress: Progress, out: Path,
                 config: FeaturizeConfig) -> None:
    """The forward pass runs here; writing, flushing and saving progress run in a writer thread."""
    saver = _Saver(writer, progress, progress_path(out), config.flush_seconds, config.flush_batches)
    with progress_bar(total, "featurize", not config.quiet, done=progress.next_index) as advance:
        with BackgroundWriter(saver.write) as background:
            for batch in batches:
                pending = fz.submit(batch.images, config.dtype) if batch.indices else dict
                background.put((batch, pending))
                advance(len(batch.indices) + len(batch.failures))
    if saver.unsaved:
        saver.save()


# An fsync every 16 MB wrote 200 MB/s on this project's VM, every 128 MB 850 MB/s: at GPU rates
# (16 MB is 250 pool5+fc6+fc7 rows) a sync per 16 batches would make the disk the limit.
_MIN_SAVE_SECONDS = 0.25


class _Saver:
    """Writes computed batches in order; flushes and saves the resume point every few seconds or batches.

    The progress file is saved only after a flush, so it never vouches for rows that might not be on
    disk; rows written after it are written again by a resumed run, which makes resume exact.
    """

    def __init__(self, writer: StoreWriter, progress: Progress, path: Path, seconds: float, batches: int):
        self.writer, self.progress, self.path = writer, progress, path
        self.seconds, self.batches = seconds, batches
        self.unsaved, self._last = 0, time.monotonic()

    def write(self, item) -> None:
        batch, pending = item
        progress = self.progress
        if batch.indices:
            self.writer.write_rows(progress.rows, pending())
        progress.rows += len(batch.indices)
        progress.skipped += batch.failures
        progress.next_index = max(batch.indices + [i for i, _ in batch.failures]) + 1
        self.unsaved += 1
        elapsed = time.monotonic() - self._last
        if (self.unsaved >= self.batches or elapsed >= self.seconds) and elapsed >= _MIN_SAVE_SECONDS:
            self.save()

    def save(self) -> None:
        self.writer.flush()
        self.progress.save(self.path)
        self.unsaved, self._last = 0, time.monotonic()


def _finish(out: Path, images: SampleList, progress: Progress) -> None:
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
