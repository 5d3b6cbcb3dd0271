"""The featurize run: images -> network activations -> HDF5 store, resumable (the local driver)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alexfeat import __version__
from alexfeat.featurizer.decode import ImageDataset, Preprocess, make_loader
from alexfeat.featurizer.device import default_workers, resolve_device
from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.memory import computed_batches
from alexfeat.featurizer.models import Arch, LoadedModel, load_model
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
    source: SourceOptions = SourceOptions()
    shard: tuple[int, int] | None = None  # (I, N): this run's 1/N of the input
    parts: Path | None = None  # write a folder of part stores instead of ``out``
    part_size: int = 10_000
    engine: str = "local"  # local | ray
    address: str | None = None  # ray: the cluster to join (None: a local one)
    actors: int | None = None  # ray: featurizer actors (None: one per GPU, else one)


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


def featurize(config: FeaturizeConfig) -> FeaturizeResult:
    """Run a featurize job described by ``config``; see the README for the store format."""
    if config.engine not in ("local", "ray"):
        raise AlexfeatError(f"unknown --engine {config.engine!r}: use local or ray")
    if config.dtype not in ("float32", "float16"):
        raise AlexfeatError(f"unknown --dtype {config.dtype!r}: use float32 or float16")
    if config.engine == "ray" or config.parts is not None:
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
    loaded = load_model(Arch(model=config.model), config.weights, seed=config.seed, download=config.download)
    return loaded, apply_overrides(loaded.preprocess, config.resize, config.crop, config.mean, config.std)


def write_store(config: FeaturizeConfig, out: Path, images: SampleList, loaded: LoadedModel, pre: Preprocess,
                device: torch.device, fz: Featurizer | None = None, started: float | None = None,
                extra_attrs: dict | None = None) -> FeaturizeResult:
    """Featurize ``images`` into the store ``out``, resuming its interrupted run when ``config.resume``."""
    started = time.perf_counter() if started is None else started
    progress = _progress_to_resume(config, out)
    workers = default_workers(device) if config.workers is None else config.workers
    dataset = ImageDataset(images.files, pre, indices=range(progress.next_index if progress else 0, len(images)))
    # Workers start decoding now, while the network is traced and the store is created.
    batches = iter(make_loader(dataset, config.batch_size, workers, pin_memory=device.type == "cuda"))
    fz = fz or Featurizer(loaded, config.layers or default_layers(config.model), pre, config.pool, device)
    attrs = {**store_attributes(config, fz, images), **(extra_attrs or {})}
    writer, progress = _open_writer(out, len(images), fz.dims, config.dtype, attrs,
                                    _fingerprint(attrs, images, config.batch_size), progress)
    try:
        _run_batches(fz, batches, len(images), writer, progress, out, config)
    except OSError as exc:  # h5py's word for a full disk or a vanished folder under OUT.partial
        raise AlexfeatError(f"cannot write {partial_path(out)}: {str(exc).splitlines()[0]}; the finished batches "
                            f"are kept: free some space, then run the same command with --resume") from None
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


def store_attributes(config: FeaturizeConfig, fz: Featurizer, images: SampleList) -> dict:
    return {
        "classes": json.dumps(list(images.classes)),
        "model": config.model,
        "weights": fz.loaded.weights_id,
        "layers": json.dumps(list(fz.layers)),
        "preprocess": fz.pre.to_json(),
        "options": json.dumps({"pool": config.pool, "dtype": config.dtype, "arch": fz.loaded.arch.to_dict()}),
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


def _fingerprint(attrs: dict, images: SampleList, batch_size: int) -> str:
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
        for batch, feats in computed_batches(fz, batches, config.dtype):
            if batch.indices:
                writer.write_rows(progress.rows, feats)
                writer.flush()
            progress.rows += len(batch.indices)
            progress.skipped += batch.failures
            progress.next_index = max(batch.indices + [i for i, _ in batch.failures]) + 1
            progress.save(ppath)
            advance(len(batch.indices) + len(batch.failures))


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
