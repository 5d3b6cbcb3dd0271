"""The run folder of a trainer: config.json, metrics.csv, last.pt, best.pt, epoch_N.pt, skipped.csv, val.csv,
curves.png.

Checkpoints (docs/formats.md, "The checkpoint"): ``last.pt`` holds what resume needs (weights,
optimizer and scheduler state, round and epoch); ``best.pt`` and the ``epoch_N.pt`` snapshots
hold only the weights, the config and the metrics, about the size of the weights.
"""

from __future__ import annotations

import contextlib
import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alexfeat.atomic import atomic_write_text
from alexfeat.errors import AlexfeatError
from alexfeat.lock import RunLock
from alexfeat.paths import is_run_folder
from alexfeat.trainers.config import TrainConfig

# Checkpoints (torch) are imported where they are read: info and plot read run folders without torch.
if TYPE_CHECKING:
    from alexfeat.featurizer.checkpoint import Checkpoint

__all__ = ["RunDir", "METRIC_FIELDS", "describe_run"]

METRIC_FIELDS = ["epoch", "round", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                 "seconds"]


class RunDir:
    """Reads and writes one run folder; nothing else touches its files."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock: RunLock | None = None
        self._created: Path | None = None  # the top-most folder claim made (the run's own or a missing parent)

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.csv")
    last_path = property(lambda self: self.path / "last.pt")
    best_path = property(lambda self: self.path / "best.pt")
    curves_path = property(lambda self: self.path / "curves.png")
    skipped_path = property(lambda self: self.path / "skipped.csv")
    val_path = property(lambda self: self.path / "val.csv")  # the validation rows, a list file evaluate reads
    lock_path = property(lambda self: self.path / ".lock")

    def snapshot_path(self, epoch: int) -> Path:
        return self.path / f"epoch_{epoch}.pt"

    def lock(self) -> "RunDir":
        """Hold the run folder for this process (the OS releases it on exit, kill -9 included); a second
        train or resume on the folder is refused. Then remove temporary files a killed run left behind."""
        self._lock = RunLock(self.lock_path, f"the run folder {self.path}").acquire()
        for stale in self.path.glob(".*.tmp"):  # atomic_output's temporaries: ours are gone, theirs were killed
            stale.unlink(missing_ok=True)
        return self

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._created is not None and not self.config_path.exists():
            # A new run refused before it started (a bad option, a bad folder): the folders it made go.
            with contextlib.suppress(OSError):
                for folder in (self.path, *self.path.parents):
                    folder.rmdir()  # only an empty one
                    if folder == self._created:
                        break

    @classmethod
    def claim(cls, path: Path) -> "RunDir":
        """A locked folder for a new run (created with its missing parents); refused if it holds a run."""
        run = cls(path)
        if run.config_path.exists():
            raise AlexfeatError(f"{path} already holds a run: use --resume {path} to continue it, "
                                f"or choose another -o folder")
        run._created = next((p for p in reversed((run.path, *run.path.parents)) if not p.exists()), None)
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AlexfeatError(f"cannot create the run folder {path}: {exc.strerror}") from None
        run.lock()
        if run.config_path.exists():  # another run created it while we waited for the lock
            raise AlexfeatError(f"{path} already holds a run: use --resume {path} to continue it")
        return run

    @classmethod
    def create(cls, path: Path, config: TrainConfig) -> "RunDir":
        """A new run folder holding ``config.json`` and an empty ``metrics.csv``, not left locked."""
        run = cls.claim(path)
        try:
            run.start(config)
        finally:
            run.unlock()
        return run

    def start(self, config: TrainConfig) -> None:
        """Write ``config.json`` and an empty ``metrics.csv``: the folder now holds a run."""
        self.write_config(config)
        with open(self.metrics_path, "w", newline="") as f:
            csv.writer(f).writerow(METRIC_FIELDS)

    def discard(self) -> None:
        """Undo ``start`` for a run stopped before its first checkpoint: with nothing to resume, the folder
        must not claim to hold a run (the same command can then start it again)."""
        for path in (self.config_path, self.metrics_path, self.skipped_path, self.val_path):
            path.unlink(missing_ok=True)

    def write_config(self, config: TrainConfig) -> None:
        atomic_write_text(self.config_path, config.to_json())

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        run = cls(path)
        if not is_run_folder(path):
            raise AlexfeatError(f"{path} is not an alexfeat run folder (no config.json)")
        return run

    def config(self, **changes) -> TrainConfig:
        try:
            return TrainConfig.from_json(self.config_path.read_text(), **changes)
        except (ValueError, TypeError, KeyError, OSError) as exc:  # a JSONDecodeError is a ValueError
            raise AlexfeatError(f"{self.config_path} cannot be read as a run's settings ({type(exc).__name__}): "
                                f"restore it from a copy, or start a new run") from None

    def metrics(self) -> list[dict[str, Any]]:
        with open(self.metrics_path, newline="") as f:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a", newline="") as f:
            csv.DictWriter(f, METRIC_FIELDS).writerow({k: row.get(k, "") for k in METRIC_FIELDS})
            f.flush()
            os.fsync(f.fileno())

    def truncate_metrics(self, epochs: int) -> None:
        """Keep the rows of the first ``epochs`` epochs (a resumed run re-does later ones)."""
        rows = [r for r in self.metrics() if int(r["epoch"]) <= epochs]
        lines = [",".join(METRIC_FIELDS)] + [",".join(_text(r.get(k, "")) for k in METRIC_FIELDS) for r in rows]
        atomic_write_text(self.metrics_path, "\n".join(lines) + "\n")

    def save_checkpoint(self, checkpoint: Checkpoint, best: bool, snapshot: bool = False) -> None:
        """``last.pt`` always; ``best.pt`` and an ``epoch_N.pt`` snapshot without the resume-only state."""
        checkpoint.write(self.last_path)
        lean = checkpoint.lean()
        if best:
            lean.write(self.best_path)
        if snapshot:
            lean.write(self.snapshot_path(checkpoint.epoch))

    def load_last(self) -> Checkpoint:
        if not self.last_path.exists():
            raise AlexfeatError(f"{self.path} has no last.pt checkpoint to resume from")
        from alexfeat.featurizer.checkpoint import Checkpoint

        return Checkpoint.read(self.last_path)

    def checkpoints(self) -> list[Path]:
        """The checkpoint files in the folder (last.pt, best.pt and any kept snapshots), by name."""
        return sorted(self.path.glob("*.pt"))

    def write_skipped(self, skipped: list[tuple[str, str]]) -> None:
        _write_csv(self.skipped_path, ["path", "reason"], skipped)

    def write_validation(self, paths: list[str], labels: list[str]) -> None:
        """The validation split as a labelled list file: ``alexfeat evaluate RUN/last.pt RUN/val.csv``
        chooses test-time settings (--tta, --crop) on the images the run never trained on."""
        _write_csv(self.val_path, ["path", "label"], zip(paths, labels))


def _write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def _text(value: Any) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def describe_run(path: Path) -> list[str]:
    """``alexfeat info RUN``: the run's settings, its epochs, which one best.pt holds, and its files."""
    run = RunDir.open(path)
    config, rows = run.config(), run.metrics()
    what = config.model if config.mode == "scratch" else f"{config.model} from {config.weights}"
    lines = [f"{config.mode} run {path}: {what}, {len(rows)} epoch(s) done of {config.epochs}"
             + (f" (layer-wise, round {rows[-1]['round'] if rows else 0})" if config.layerwise else "")
             + (f", weights averaged from epoch {config.swa_from} at lr {config.averaging_lr:g}"
                if config.swa_from else "")]
    lines += _best_and_last(rows)
    for checkpoint in run.checkpoints():
        lines.append(f"  {checkpoint.name}: {checkpoint.stat().st_size / 1e6:.1f} MB")
    lines.append(f"  settings: {run.config_path}; metrics: {run.metrics_path}")
    return lines


def _best_and_last(rows: list[dict]) -> list[str]:
    """Which epoch best.pt holds and its scores, then each split's last accuracy, and a higher test
    accuracy at another epoch labelled as not best.pt's. From metrics.csv (no torch), by the trainer's
    rule: the first epoch of the highest validation accuracy, or test accuracy without a validation split."""
    metric = "val_acc" if any(r.get("val_acc") is not None for r in rows) else "test_acc"
    scored = [r for r in rows if r.get(metric) is not None]
    if not scored:
        return []
    best = max(scored, key=lambda r: r[metric])
    chosen = "validation" if metric == "val_acc" else "test (no --val-split: an optimistic choice)"
    lines = [f"  best.pt: epoch {best['epoch']}, chosen by {chosen} accuracy {best[metric]:.4f}"
             + (f"; its test accuracy {best['test_acc']:.4f}"
                if metric == "val_acc" and best.get("test_acc") is not None else "")]
    for split in ("val", "test"):
        key = f"{split}_acc"
        done = [r for r in rows if r.get(key) is not None]
        if done:
            peak = max(done, key=lambda r: r[key])
            higher = best.get(key) is None or peak[key] > best[key]
            lines.append(f"  {split} accuracy: last {done[-1][key]:.4f}"
                         + (f"; peak {peak[key]:.4f} at epoch {peak['epoch']} (not what best.pt holds)"
                            if higher else ""))
    return lines
