"""The Ray driver: ``featurize --engine ray --parts DIR [--address ADDR] [--actors N]``.

The same stages as the local run, placed by Ray Data: reading and decoding run as CPU tasks
(``map_batches(decode_batch)``), the network in an actor pool of ``Featurizer`` s (one GPU each
where the cluster has GPUs), and each bundle of about ``--part-size`` rows is written by a task
as a part store with its done marker. A marker lists the input rows its part holds, so a rerun
after a failure or preemption featurizes only the rows no done part holds. Parts need storage
every node can reach (a shared file system) when the cluster has several nodes.

Rows are regrouped into blocks of exactly ``--part-size`` before the write stage (the last part of a
run holds the rest), so parts do not follow the decode stage's block sizes. A cluster given by
``--address HOST:PORT`` is checked first, in about a second: one that cannot be reached, or that asks
for a token this process does not send (``ray start --head`` enables token authentication), is one line
saying what to set, instead of Ray's ~20 s of retries and a ConnectionError. Under ``--quiet`` nothing of
Ray's is printed: no log lines, progress bars or deprecation warnings (its session logs keep them).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np

import torch

from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.decode import ImageDataset, Preprocess
from alexfeat.featurizer.device import resolve_device, resolve_precision
from alexfeat.featurizer.featurizer import Featurizer, default_layers
from alexfeat.featurizer.models import load_by_name
from alexfeat.featurizer.run import (FeaturizeConfig, FeaturizeResult, done_with_other_settings, featurizer_for,
                                     keys_digest, part_settings, provenance_of, read_source, settings_difference)
from alexfeat.featurizer.sources import ParquetImage, SampleList, TarMember
from alexfeat.lock import RunLock
from alexfeat.output import cannot_write
from alexfeat.store.markers import read_marker
from alexfeat.store.paths import partial_path, progress_path
from alexfeat.store.provenance import Provenance
from alexfeat.store.reader import FeatureStore
from alexfeat.store.writer import write_part

__all__ = ["featurize_ray", "check_cluster", "decode_batch", "FeaturizerActor"]


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
    if config.address is not None and not ray.is_initialized():
        check_cluster(config.address)  # before anything is made
    folder = Path(config.parts)
    if not folder.parent.is_dir():
        raise AlexfeatError(f"output folder {folder.parent} does not exist")
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise cannot_write(folder, exc) from None
    samples = read_source(config)
    if any(isinstance(item, ParquetImage) for item in samples.items):
        raise AlexfeatError("--engine ray reads image files and tar shards, not images stored inside Parquet: "
                            "use the local engine (with --parts DIR --shard I/N to spread the work)")
    shard, shards = config.shard or (0, 1)
    started = time.perf_counter()
    with RunLock(folder / f"shard-{shard:05d}.lock", f"shard {shard} of {folder}"):
        precision = _actors_precision(config)
        settings = {**part_settings(config, precision), "engine": "ray", "keys_sha256": keys_digest(samples.keys)}
        done = _done_indices(folder, shard, settings)
        todo = [i for i in range(len(samples)) if i not in done]
        if todo:
            # Built once here for the store attributes (weights id, dimensions) every part records, in the
            # actors' precision, not the probe's CPU's.
            probe = featurizer_for(replace(config, precision=precision), device="cpu")
            pre = probe.pre
            provenance = provenance_of(config, probe, samples)
            stats = {"shard": shard, "shards": shards, "images": len(samples), "settings": settings}
            started_ray = not ray.is_initialized()
            with _quiet_ray() if config.quiet else nullcontext():
                if started_ray:
                    ray.init(address=config.address, include_dashboard=False, log_to_driver=not config.quiet,
                             logging_level=logging.ERROR if config.quiet else logging.INFO)
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
    return FeaturizeResult(folder, rows, skipped, time.perf_counter() - started, size, already_done=not todo)


def check_cluster(address: str) -> None:
    """AlexfeatError, within seconds, for a cluster at ``address`` (HOST:PORT) this process cannot join:
    nothing listening, or token authentication without (the right) token. Other addresses ("auto",
    ray://) and other failures are left to ``ray.init``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise AlexfeatError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}): check --address, "
                            f"or start one there with: ray start --head --port {port}") from None
    try:
        from ray._raylet import GcsClient
        from ray.exceptions import AuthenticationError
    except ImportError:  # another Ray version: its own connection says what is wrong
        return
    try:
        with _no_stderr():  # Ray's C++ client logs the rejection itself, on the process's stderr
            GcsClient(address=address)
    except AuthenticationError:
        raise AlexfeatError(_token_advice(address)) from None
    except Exception:  # noqa: BLE001 - not ours to word: ray.init meets it again and says it
        return


def _token_advice(address: str) -> str:
    where = "RAY_AUTH_TOKEN=TOKEN (or RAY_AUTH_TOKEN_PATH=FILE, or the file ~/.ray/auth_token)"
    fetch = "on the head node, `ray get-auth-token` prints it"
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return (f"the Ray cluster at {address} requires token authentication: set RAY_AUTH_MODE=token and "
                f"{where} ({fetch}), then run the command again")
    return (f"the Ray cluster at {address} refused this process's token: set {where} to the cluster's token "
            f"({fetch}), then run the command again")


@contextmanager
def _no_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null: what C++ libraries print there, too."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextmanager
def _quiet_ray() -> Iterator[None]:
    """--quiet: none of Ray's log lines, progress bars, deprecation warnings or C++ messages on the terminal."""
    logger = logging.getLogger("ray")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), _no_stderr():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _done_indices(folder: Path, shard: int, settings: dict) -> set[int]:
    """Input rows held by this shard's done parts; unmarked parts (a failed run's) are removed."""
    done: set[int] = set()
    for part in sorted(folder.glob(f"part-{shard:05d}-*.h5")):
        marker = read_marker(part)
        if marker is None:
            part.unlink()
            continue
        difference = settings_difference(marker.get("settings") or {}, settings)
        if difference is not None:
            raise done_with_other_settings(part, difference)
        done.update(marker["indices"])
    for leftover in folder.glob(f"part-{shard:05d}-*.h5.partial*"):
        leftover.unlink()
    return done


def _actors_precision(config: FeaturizeConfig) -> str:
    """The precision the actors run the network in, said on this machine, which may have no GPU (a head node):
    fp32 or bf16 as given; with --device cuda, bf16 by the default and auto rules; else the rule on this
    machine's device (``device.resolve_precision``)."""
    if config.precision in ("fp32", "bf16"):
        return config.precision
    if config.device == "cuda":
        return "bf16"
    return resolve_precision(config.precision, resolve_device(config.device))


def _run(ray, config: FeaturizeConfig, samples: SampleList, todo: list[int], pre, provenance: Provenance, stats: dict,
         folder: Path) -> None:
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = not config.quiet
    context.print_on_execution_start = not config.quiet
    rows = [_row(samples, i) for i in todo]
    blocks = max(1, min(len(rows) // config.batch_size, 4 * int(ray.cluster_resources().get("CPU", 1))))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = config.actors or max(1, gpus)
    model = {"model": config.model, "weights": config.weights, "layers": config.layers, "pool": config.pool,
             "seed": config.seed, "dtype": config.dtype, "pre": pre.to_json(), "device": config.device,
             "tta": config.tta, "download": config.download, "precision": provenance.precision}
    written = (ray.data.from_items(rows, override_num_blocks=blocks)
     .map_batches(decode_batch, fn_kwargs={"pre": pre.to_json(), "max_pixels": config.max_pixels},
                  batch_size=config.batch_size, num_cpus=1)
     .map_batches(FeaturizerActor, fn_constructor_kwargs=model, batch_size=config.batch_size,
                  compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=1 if gpus else 0)
     # Blocks of exactly --part-size rows (the last one: the rest), each written whole as one part; without
     # it a part would end at each upstream block's end (50/17/50/17/... for --part-size 50).
     .repartition(target_num_rows_per_block=config.part_size, strict=True)
     .map_batches(write_block, fn_kwargs={"folder": str(folder), "provenance": provenance, "stats": stats},
                  batch_size=config.part_size, num_cpus=1)
     .materialize())
    # A write task's AlexfeatError (a full disk) comes back as data, not as Ray's wrapped traceback.
    failures = sorted(str(row["failure"]) for row in written.take_all() if row["failure"])
    if failures:
        raise AlexfeatError(failures[0] + (f" (and {len(failures) - 1} more part(s))" if len(failures) > 1 else ""))


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
                 device: str, download: bool, precision: str = "fp32", tta: str = "none"):
        loaded = load_by_name(model, weights, seed=seed, download=download)
        self.dtype = dtype
        self.fz = Featurizer(loaded, tuple(layers) or default_layers(loaded.arch.model),
                             Preprocess.from_dict(json.loads(pre)),
                             pool, resolve_device(device), precision=precision, tta=tta)

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
    try:
        write_part(part, features, [k for k, good in zip(keys, ok) if good],
                   [int(batch["label"][i]) for i, good in zip(order, ok) if good],
                   [(k, str(batch["error"][i])) for k, i, good in zip(keys, order, ok) if not good],
                   replace(provenance, part={"shard": stats["shard"], "shards": stats["shards"]}),
                   {**stats, "indices": index.tolist()})
    except AlexfeatError as exc:  # the part is not written (write_part leaves nothing); the driver says why
        return {"part": np.array([part.name]), "rows": np.array([0]), "failure": np.array([str(exc)])}
    return {"part": np.array([part.name]), "rows": np.array([int(ok.sum())]), "failure": np.array([""])}
