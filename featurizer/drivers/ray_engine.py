"""The Ray driver: ``featurize --engine ray --parts DIR [--address ADDR] [--actors N]``.

The same stages as the local run, placed by Ray Data: reading and decoding run as CPU tasks
(``map_batches(decode_batch)``), the network in an actor pool of ``Featurizer`` s (one GPU each
where the cluster has GPUs), and each bundle of about ``--part-size`` rows is written by a task
as a part store with its done marker. A marker lists the input rows its part holds, so a rerun
after a failure or preemption featurizes only the rows no done part holds. Parts need storage
every node can reach (a shared file system) when the cluster has several nodes.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import torch

from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.decode import ImageDataset, Preprocess
from alexfeat.featurizer.device import resolve_device
from alexfeat.featurizer.featurizer import Featurizer, default_layers
from alexfeat.featurizer.models import load_by_name
from alexfeat.featurizer.run import (FeaturizeConfig, FeaturizeResult, featurizer_for, keys_digest, part_settings,
                                     provenance_of, read_source)
from alexfeat.featurizer.sources import SampleList, TarMember
from alexfeat.lock import RunLock
from alexfeat.store.markers import read_marker
from alexfeat.store.paths import partial_path, progress_path
from alexfeat.store.provenance import Provenance
from alexfeat.store.reader import FeatureStore
from alexfeat.store.writer import write_part

__all__ = ["featurize_ray", "decode_batch", "FeaturizerActor"]


def featurize_ray(config: FeaturizeConfig) -> FeaturizeResult:
    try:
        import ray
    except ImportError:
        raise AlexfeatError("--engine ray needs Ray: pip install 'alexfeat[ray]'") from None
    if config.parts is None or config.out is not None:
        raise AlexfeatError("--engine ray writes a folder of parts: give --parts DIR instead of OUT "
                            "(then alexfeat merge DIR OUT.h5)")
    if config.decode == "gpu":
        raise AlexfeatError("--engine ray decodes in CPU tasks next to the data; drop --decode gpu")
    folder = Path(config.parts)
    if not folder.parent.is_dir():
        raise AlexfeatError(f"output folder {folder.parent} does not exist")
    folder.mkdir(exist_ok=True)
    samples = read_source(config)
    shard, shards = config.shard or (0, 1)
    started = time.perf_counter()
    with RunLock(folder / f"shard-{shard:05d}.lock", f"shard {shard} of {folder}"):
        settings = {**part_settings(config), "engine": "ray", "keys_sha256": keys_digest(samples.keys)}
        done = _done_indices(folder, shard, settings)
        todo = [i for i in range(len(samples)) if i not in done]
        if todo:
            # Built once here for the store attributes (weights id, dimensions) every part records.
            probe = featurizer_for(config, device="cpu")
            pre = probe.pre
            provenance = provenance_of(config, probe, samples)
            stats = {"shard": shard, "shards": shards, "images": len(samples), "settings": settings}
            started_ray = not ray.is_initialized()
            if started_ray:
                ray.init(address=config.address, include_dashboard=False, log_to_driver=not config.quiet)
            try:
                _run(ray, config, samples, todo, pre, provenance, stats, folder)
            finally:
                if started_ray:
                    ray.shutdown()
    rows, skipped, size = 0, [], 0
    for part in sorted(folder.glob(f"part-{shard:05d}-*.h5")):
        with FeatureStore.open(part) as store:
            rows += len(store)
            skipped += store.skipped
        size += part.stat().st_size
    return FeaturizeResult(folder, rows, skipped, time.perf_counter() - started, size)


def _done_indices(folder: Path, shard: int, settings: dict) -> set[int]:
    """Input rows held by this shard's done parts; unmarked parts (a failed run's) are removed."""
    done: set[int] = set()
    for part in sorted(folder.glob(f"part-{shard:05d}-*.h5")):
        marker = read_marker(part)
        if marker is None:
            part.unlink()
            continue
        if marker.get("settings") != settings:
            raise AlexfeatError(f"{part} is done but was written with other settings or images; use a new "
                                f"--parts folder (or delete {folder}) to start again")
        done.update(marker["indices"])
    for leftover in folder.glob(f"part-{shard:05d}-*.h5.partial*"):
        leftover.unlink()
    return done


def _run(ray, config: FeaturizeConfig, samples: SampleList, todo: list[int], pre, provenance: Provenance, stats: dict,
         folder: Path) -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = not config.quiet
    rows = [_row(samples, i) for i in todo]
    blocks = max(1, min(len(rows) // config.batch_size, 4 * int(ray.cluster_resources().get("CPU", 1))))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = config.actors or max(1, gpus)
    model = {"model": config.model, "weights": config.weights, "layers": config.layers, "pool": config.pool,
             "seed": config.seed, "dtype": config.dtype, "pre": pre.to_json(), "device": config.device,
             "tta": config.tta,
             "download": config.download}
    (ray.data.from_items(rows, override_num_blocks=blocks)
     .map_batches(decode_batch, fn_kwargs={"pre": pre.to_json(), "max_pixels": config.max_pixels},
                  batch_size=config.batch_size, num_cpus=1)
     .map_batches(FeaturizerActor, fn_constructor_kwargs=model, batch_size=config.batch_size, concurrency=actors,
                  num_gpus=1 if gpus else 0)
     .map_batches(write_block, fn_kwargs={"folder": str(folder), "provenance": provenance, "stats": stats},
                  batch_size=config.part_size, num_cpus=1)
     .materialize())


def _row(samples: SampleList, i: int) -> dict:
    item = samples.items[i]
    if isinstance(item, TarMember):
        return {"index": i, "key": samples.keys[i], "label": samples.labels[i], "file": item.tar,
                "offset": item.offset, "size": item.size}
    return {"index": i, "key": samples.keys[i], "label": samples.labels[i], "file": str(item), "offset": -1,
            "size": -1}


def decode_batch(batch: dict, pre: str, max_pixels: int) -> dict:
    """Rows -> uint8 images [B, C, crop, crop] (zeros where decoding failed) and the failure reasons."""
    preprocess = Preprocess.from_dict(json.loads(pre))
    items = [Path(f) if o < 0 else TarMember(f, int(o), int(s))
             for f, o, s in zip(batch["file"], batch["offset"], batch["size"])]
    dataset = ImageDataset(items, preprocess, max_pixels=max_pixels)
    shape = (len(items), preprocess.channels, preprocess.crop, preprocess.crop)
    images, errors = np.zeros(shape, dtype=np.uint8), []
    for i in range(len(items)):
        _, image, reason = dataset[i]
        if image is not None:
            images[i] = image.numpy()
        errors.append(reason or "")
    return {"index": batch["index"], "key": batch["key"], "label": batch["label"], "image": images,
            "error": np.array(errors, dtype=object)}


class FeaturizerActor:
    """Holds one ``Featurizer`` (loaded once per actor) and applies it to decoded batches."""

    def __init__(self, model: str | None, weights: str, layers: tuple, pool: str, seed: int, dtype: str, pre: str,
                 device: str, download: bool, tta: str = "none"):
        loaded = load_by_name(model, weights, seed=seed, download=download)
        self.dtype = dtype
        self.fz = Featurizer(loaded, tuple(layers) or default_layers(loaded.arch.model),
                             Preprocess.from_dict(json.loads(pre)),
                             pool, resolve_device(device), tta=tta)

    def __call__(self, batch: dict) -> dict:
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        out = {k: batch[k] for k in ("index", "key", "label", "error")}
        feats = self.fz(torch.from_numpy(np.ascontiguousarray(batch["image"][ok]))) if ok.any() else {}
        for layer, dim in self.fz.dims.items():
            values = np.zeros((len(ok), dim), dtype=self.dtype)
            if ok.any():
                values[ok] = feats[layer]
            out[f"features/{layer}"] = values
        return out


def write_block(batch: dict, folder: str, provenance: Provenance, stats: dict) -> dict:
    """Write one bundle of rows as a part store named by its first input row, then its marker."""
    order = np.argsort(batch["index"])
    index = batch["index"][order]
    ok = np.array([not batch["error"][i] for i in order], dtype=bool)
    layers = provenance.layers
    features = {layer: batch[f"features/{layer}"][order][ok] for layer in layers}
    keys = [str(batch["key"][i]) for i in order]
    part = Path(folder) / f"part-{stats['shard']:05d}-{int(index[0]):09d}.h5"
    progress_path(part).unlink(missing_ok=True)
    partial_path(part).unlink(missing_ok=True)
    write_part(part, features, [k for k, good in zip(keys, ok) if good],
               [int(batch["label"][i]) for i, good in zip(order, ok) if good],
               [(k, str(batch["error"][i])) for k, i, good in zip(keys, order, ok) if not good],
               replace(provenance, part={"shard": stats["shard"], "shards": stats["shards"]}),
               {**stats, "indices": index.tolist()})
    return {"part": np.array([part.name]), "rows": np.array([int(ok.sum())])}
