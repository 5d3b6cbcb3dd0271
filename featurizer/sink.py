"""The store sink: decoded batches -> the Featurizer -> rows of one HDF5 store, flushed, resumable.

The local driver writes its one store through it, the parts driver each of its parts.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import torch

from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.background import BackgroundWriter
from alexfeat.featurizer.decode import ImageDataset, Preprocess, make_loader
from alexfeat.featurizer.device import default_threads, default_workers, resolve_decode, resolve_precision
from alexfeat.featurizer.featurizer import Featurizer, default_layers, precision_note
from alexfeat.featurizer.gpu_decode import EncodedDataset, collate_encoded, decode_on_device
from alexfeat.featurizer.backends import LoadedModel
from alexfeat.featurizer.run import UNRECORDED_DEFAULTS, FeaturizeConfig, FeaturizeResult, provenance_of
from alexfeat.featurizer.sources import SampleList
from alexfeat.output import CannotWrite, cannot_write
from alexfeat.progress import progress_bar
from alexfeat.store.paths import partial_path, progress_path
from alexfeat.store.provenance import Provenance
from alexfeat.store.writer import Progress, StoreWriter

__all__ = ["write_store"]


def write_store(config: FeaturizeConfig, out: Path, images: SampleList, loaded: LoadedModel, pre: Preprocess,
                device: torch.device, fz: Featurizer | None = None, started: float | None = None,
                part: dict | None = None) -> FeaturizeResult:
    """Featurize ``images`` into the store ``out``, resuming its interrupted run when ``config.resume``."""
    started = time.perf_counter() if started is None else started
    progress = _progress_to_resume(config, out)
    decode = resolve_decode(config.decode, device)
    precision = resolve_precision(config.precision, device)
    workers = default_workers(device, decode, precision) if config.workers is None else config.workers
    threads = default_threads(device, workers) if config.threads is None else config.threads
    # Workers start decoding now, while the network is traced and the store is created.
    batches = _batches(images, pre, range(progress.next_index if progress else 0, len(images)), decode, device,
                       config.batch_size, workers, config.max_pixels)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fz = fz or Featurizer(loaded, config.layers or default_layers(loaded.arch.model), pre, config.pool, device,
                              config.compile, config.precision, config.tta)
        provenance = replace(provenance_of(config, fz, images), decode=decode, part=part)
        # A failed creation leaves nothing; a failure after it keeps OUT.partial and its progress file.
        writer, progress = _open_writer(out, len(images), fz.dims, config.dtype, provenance,
                                        _fingerprint(provenance, images, config.batch_size, config.compression),
                                        progress,
                                        config.compression)
        try:
            _run_batches(fz, batches, len(images), writer, progress, out, config)
        except CannotWrite as exc:  # a full or read-only disk, met by a batch, a flush or the progress file
            raise exc.resumed(_resume_hint(out, part)) from None
        except OSError as exc:  # a full disk said by another writer, or a vanished folder under OUT.partial
            error = cannot_write(partial_path(out), exc, _resume_hint(out, part))
            raise (error if error is not exc else AlexfeatError(
                f"cannot write {partial_path(out)}: {str(exc).splitlines()[0]}; {_resume_hint(out, part)}")) from None
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
    try:
        _finish(out, images, progress)
    except CannotWrite as exc:
        raise exc.resumed(_resume_hint(out, part)) from None
    skipped = [(images.paths[i], reason) for i, reason in progress.skipped]
    setup = f"{workers} decoding worker{'s' * (workers != 1)}, {threads} torch thread{'s' * (threads != 1)}, " \
            f"JPEGs decoded on the {decode.upper()}, network in {fz.precision}" + _preprocess_note(loaded, pre, config)
    return FeaturizeResult(out, progress.rows, skipped, seconds, out.stat().st_size, setup, images.warnings,
                           precision_note(fz))


def _preprocess_note(loaded: LoadedModel, pre: Preprocess, config: FeaturizeConfig) -> str:
    """Which mean and std a weights file that records none was used with, and where they came from."""
    assumed = [(name, getattr(pre, name)) for name in ("mean", "std") if getattr(config, name) is None]
    if not loaded.preprocess_origin or not assumed:
        return ""
    used = ", ".join(f"{name} {','.join(f'{v:g}' for v in values)}" for name, values in assumed)
    return (f"; {used} from {loaded.preprocess_origin}, as {Path(config.weights).name} records none: pass "
            f"--mean/--std if it was trained with others")


def _resume_hint(out: Path, part: dict | None) -> str:
    """How to go on after a write failed once OUT.partial had batches (a part resumes by itself)."""
    return (f"run the same command{'' if part is not None else ' with --resume'}: it continues from the "
            f"batches kept in {partial_path(out).name}")


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


# On the CPU the network is the limit and decoding, which runs ahead by several batches, only has
# to fill the gaps between its operators: workers at a lower priority take no core from it.
_NICE_WORKERS = True


def _lower_priority(worker_id: int) -> None:
    os.nice(5)


def _fingerprint(provenance: Provenance, images: SampleList, batch_size: int, compression: str = "none") -> str:
    h = hashlib.sha256()
    # Settings at their value from before they were recorded are left out: a partial store of then still resumes.
    stable = {k: v for k, v in provenance.to_attrs().items()
              if k != "alexfeat_version" and (k, v) not in UNRECORDED_DEFAULTS.items()}
    h.update(json.dumps([stable, batch_size, compression], sort_keys=True).encode())
    h.update("\n".join(images.paths).encode())
    return h.hexdigest()


def _progress_to_resume(config: FeaturizeConfig, out: Path) -> Progress | None:
    """The saved progress of an interrupted run, when resuming one; None to start afresh."""
    if config.resume and progress_path(out).exists() and partial_path(out).exists():
        return Progress.load(progress_path(out))
    return None


def _open_writer(out: Path, n: int, dims: dict[str, int], dtype: str, provenance: Provenance, fingerprint: str,
                 progress: Progress | None, compression: str = "none") -> tuple[StoreWriter, Progress]:
    if progress is not None:
        if progress.fingerprint != fingerprint:
            raise AlexfeatError(f"cannot resume {partial_path(out)}: it was started with other options, "
                                f"batch size or images; rerun with the same options, or --overwrite")
        return StoreWriter.reopen(out), progress
    progress_path(out).unlink(missing_ok=True)
    writer = StoreWriter.create(out, n, dims, dtype, provenance, compression)
    progress = Progress(fingerprint)
    try:
        progress.save(progress_path(out))
    except BaseException:
        writer.discard()  # without its progress file the store cannot be resumed
        raise
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
