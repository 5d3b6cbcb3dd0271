"""What every featurize driver shares: the run's settings and result, reading its source, loading its
network, and what its stores and parts record. Drivers import this module, never each other."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from alexfeat import __version__
from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.decode import Preprocess
from alexfeat.featurizer.device import resolve_device, resolve_precision
from alexfeat.featurizer.featurizer import Featurizer, apply_overrides, build_featurizer
from alexfeat.featurizer.backends import LoadedModel
from alexfeat.featurizer.models import load_by_name
from alexfeat.featurizer.sources import SampleList, SourceOptions, open_source
from alexfeat.featurizer.sources.folders import DEFAULT_MAX_PIXELS
from alexfeat.store.provenance import Provenance

__all__ = ["UNRECORDED_DEFAULTS", "FeaturizeConfig", "FeaturizeResult", "read_source", "load_network",
           "featurizer_for", "provenance_of", "part_settings", "settings_difference", "done_with_other_settings",
           "keys_digest"]


@dataclass(frozen=True)
class FeaturizeConfig:
    """Every setting of a featurize run; the CLI builds one and calls ``featurize``."""

    images: Path | str | tuple[Path | str, ...]  # a folder, list, Parquet or tar files, globs: docs/sources.md
    out: Path | None  # the store; None with ``parts``
    model: str | None = None  # None: the checkpoint's model for a trainer checkpoint, else alexnet
    weights: str = "imagenet"
    layers: tuple[str, ...] = ()  # empty: default_layers(model)
    pool: str = "none"
    dtype: str = "float32"
    tta: str = "none"  # flip: each feature the mean of the image's and its mirror image's
    batch_size: int = 64
    workers: int | None = None  # None: chosen from the CPU count and device
    threads: int | None = None  # torch threads for the forward pass; None: chosen likewise
    device: str = "auto"
    precision: str | None = None  # fp32 | bf16 | auto; None: the default (device.resolve_precision)
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
    note: str = ""  # one line on the precision this CPU could run in (featurizer.precision_note)

    already_done: bool = False  # a rerun of a --parts job whose parts were all done: nothing was featurized

    @property
    def images_per_second(self) -> float:
        return (self.rows + len(self.skipped)) / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        if self.already_done:
            return (f"nothing to do: the parts in {self.out} are already done ({self.rows} images, "
                    f"{len(self.skipped)} skipped); join them with: alexfeat merge {self.out} OUT.h5")
        return (f"wrote {self.rows} images to {self.out} ({len(self.skipped)} skipped) in {self.seconds:.1f} s: "
                f"{self.images_per_second:.1f} images/s, {self.bytes / 1e6:.1f} MB"
                + (f" ({self.setup})" if self.setup else "") + (f"\n{self.note}" if self.note else ""))


def read_source(config: FeaturizeConfig) -> SampleList:
    return open_source(config.images, config.source, config.shard)


def load_network(config: FeaturizeConfig) -> tuple[LoadedModel, Preprocess]:
    """The network and its preprocessing with the config's overrides (before the Featurizer exists: the
    local driver starts decoding with them while the network is traced)."""
    loaded = load_by_name(config.model, config.weights, seed=config.seed, download=config.download)
    return loaded, apply_overrides(loaded.preprocess, **_overrides(config))


def featurizer_for(config: FeaturizeConfig, device: str | None = None) -> Featurizer:
    """The config's network cut at its layers, on ``device`` (default: the config's)."""
    return build_featurizer(config.model, config.weights, config.layers, config.pool,
                            resolve_device(device or config.device), seed=config.seed, download=config.download,
                            overrides=_overrides(config), compile=config.compile, precision=config.precision,
                            tta=config.tta)


def _overrides(config: FeaturizeConfig) -> dict:
    return dict(resize=config.resize, crop=config.crop, mean=config.mean, std=config.std)


def provenance_of(config: FeaturizeConfig, fz: Featurizer, images: SampleList) -> Provenance:
    """What a store written by this run records of how its features were made."""
    return Provenance(
        model=fz.loaded.arch.model, weights=str(fz.loaded.weights_id), layers=tuple(fz.layers),
        preprocess=asdict(fz.pre),
        options={"pool": config.pool, "dtype": config.dtype, "arch": fz.loaded.arch.to_dict()},
        pooling=dict(fz.pooling), precision=fz.precision, tta=fz.tta, classes=tuple(images.classes),
        source=images.origin,
        alexfeat_version=__version__,
        torch_version=str(torch.__version__))


# Settings that stores and parts written before they existed lack, at the value those were made with.
UNRECORDED_DEFAULTS = {"precision": "fp32", "tta": "none"}


def part_settings(config: FeaturizeConfig, precision: str | None = None) -> dict:
    """What a done part must have been written with for a rerun to keep it. A setting at its value from before
    it existed (``UNRECORDED_DEFAULTS``) is left out, so that parts written then are kept by a rerun with it.
    ``precision``: the one the network runs in, where this machine is not where it runs (Ray's actors)."""
    settings = {"precision": precision or resolve_precision(config.precision, resolve_device(config.device)),
                "model": config.model, "weights": config.weights, "layers": list(config.layers), "pool": config.pool,
                "dtype": config.dtype, "seed": config.seed, "resize": config.resize, "crop": config.crop,
                "mean": config.mean and list(config.mean), "std": config.std and list(config.std),
                "part_size": config.part_size, "shards": config.shard[1] if config.shard else 1, "tta": config.tta}
    return {key: value for key, value in settings.items() if UNRECORDED_DEFAULTS.get(key, ...) != value}


def settings_difference(written: dict, now: dict) -> str | None:
    """The first setting a done part was written with that this run changes, said as its option
    ("--part-size 5, this run 6"); None when they agree."""
    for key in sorted(set(written) | set(now)):
        before, after = (settings.get(key, UNRECORDED_DEFAULTS.get(key)) for settings in (written, now))
        if before != after:
            if key == "keys_sha256":
                return "another list of images"
            flag = {"shards": "--shard I/N with N", "engine": "--engine"}.get(key, f"--{key.replace('_', '-')}")
            return f"{flag} {_said(before)}, this run {_said(after)}"
    return None


def done_with_other_settings(part: Path, difference: str) -> AlexfeatError:
    """The refusal of a done part written with ``difference`` (``settings_difference``, or what else differs)."""
    return AlexfeatError(f"{part} is done but was written with {difference}; rerun with its settings, or use a "
                         f"new --parts folder (or delete {part.parent}) to start again")


def _said(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "default"
    return str(value)


def keys_digest(keys) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()
