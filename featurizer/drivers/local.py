"""The local driver: ``featurize IMAGES OUT.h5`` into one resumable store on this machine."""

from __future__ import annotations

import time
from pathlib import Path

from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.device import resolve_device
from alexfeat.featurizer.run import FeaturizeConfig, FeaturizeResult, load_network, read_source
from alexfeat.featurizer.sink import write_store
from alexfeat.lock import RunLock
from alexfeat.output import check_output
from alexfeat.store.paths import lock_path, partial_path

__all__ = ["featurize_local"]


def featurize_local(config: FeaturizeConfig) -> FeaturizeResult:
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


def _check_output(config: FeaturizeConfig, out: Path) -> None:
    if config.overwrite and config.resume:
        raise AlexfeatError("--overwrite and --resume exclude each other")
    if config.resume and out.exists():
        raise AlexfeatError(f"{out} is already complete; nothing to resume")
    weights = Path(config.weights) if config.weights not in ("imagenet", "none") else None
    images = config.images if isinstance(config.images, (tuple, list)) else (config.images,)
    check_output(out, overwrite=config.overwrite, inputs=(*images, weights))


def _check_partial(config: FeaturizeConfig, out: Path) -> None:
    """Under the store's lock: an interrupted run's partial store is resumed or replaced, never lost."""
    if partial_path(out).exists() and not (config.resume or config.overwrite):
        raise AlexfeatError(f"an interrupted run left {partial_path(out)}: pass --resume to continue it, "
                            f"or --overwrite to start again")
