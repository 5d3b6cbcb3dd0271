"""The local driver into a folder of parts: ``featurize --parts DIR [--shard I/N] [--part-size 10000]``.

Each part is an ordinary resumable featurize run into ``part-SSSSS-KKKKK.h5``; its done marker is
written after the store is complete. A rerun skips done parts, resumes the unfinished one from its
last batch, and starts the rest; the network is loaded once for all of them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.run import (FeaturizeConfig, FeaturizeResult, done_with_other_settings, featurizer_for,
                                     keys_digest, part_settings, read_source, settings_difference)
from alexfeat.featurizer.sink import write_store
from alexfeat.lock import RunLock
from alexfeat.output import cannot_write, make_parents
from alexfeat.store.markers import part_name, read_marker, write_marker
from alexfeat.store.paths import lock_path, partial_path, progress_path
from alexfeat.store.reader import FeatureStore

__all__ = ["featurize_parts", "plan_parts"]


def plan_parts(n: int, part_size: int) -> list[range]:
    """Consecutive index ranges of about ``part_size`` (at least one part)."""
    if part_size < 1:
        raise AlexfeatError("--part-size must be at least 1")
    return [range(start, min(start + part_size, n)) for start in range(0, max(n, 1), part_size)]


def featurize_parts(config: FeaturizeConfig) -> FeaturizeResult:
    folder = _parts_folder(config)
    samples = read_source(config)
    shard, shards = config.shard or (0, 1)
    if not len(samples):
        raise AlexfeatError(f"shard {shard}/{shards} of {config.images} is empty: use fewer shards")
    plan = plan_parts(len(samples), config.part_size)
    settings = part_settings(config)
    started = time.perf_counter()
    network = None  # loaded when the first part needs it: a rerun over done parts loads nothing
    rows, skipped, size, written = 0, [], 0, 0
    for k, indices in enumerate(plan):
        part = folder / part_name(shard, k)
        part_samples = samples.select(indices)
        stats = {"shard": shard, "shards": shards, "index": k, "parts": len(plan), "images": len(indices),
                 "keys_sha256": keys_digest(part_samples.keys), "settings": settings}
        marker = read_marker(part)
        if marker is not None:
            _check_done_part(part, marker, stats)
        elif not part.exists():
            network = network or featurizer_for(config)
            resume = partial_path(part).exists() and progress_path(part).exists()
            with RunLock(lock_path(part), f"the part {part}"):
                write_store(replace(config, resume=resume), part, part_samples, network.loaded, network.pre,
                            network.device, fz=network,
                            part={"shard": shard, "shards": shards, "index": k})
            written += 1
        with FeatureStore.open(part) as store:
            if marker is None:  # also a part finished just before a crash, whose marker was never written
                write_marker(part, {**stats, "rows": len(store), "skipped": len(store.skipped)})
            rows += len(store)
            skipped += store.skipped
        size += part.stat().st_size
    return FeaturizeResult(folder, rows, skipped, time.perf_counter() - started, size, already_done=not written)


def _parts_folder(config: FeaturizeConfig) -> Path:
    if config.out is not None:
        raise AlexfeatError("give either an output store OUT.h5 or --parts DIR, not both")
    folder = Path(config.parts)
    make_parents(folder)
    if folder.exists() and not folder.is_dir():
        raise AlexfeatError(f"--parts {folder} is a file; name a folder")
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise cannot_write(folder, exc) from None
    return folder


def _check_done_part(part: Path, marker: dict, expected: dict) -> None:
    difference = settings_difference(marker.get("settings") or {}, expected["settings"])
    if difference is None:
        for key in ("shards", "parts", "keys_sha256"):
            if marker.get(key) != expected[key]:
                difference = "other images" if key == "keys_sha256" else f"other {key}"
                break
    if difference is not None:
        raise done_with_other_settings(part, difference)
