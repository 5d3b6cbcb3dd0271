"""The run folder of a trainer: config.json, metrics.csv, last.pt, best.pt, skipped.csv, curves.png."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from alexfeat.featurizer.atomic import atomic_write_text
from alexfeat.featurizer.checkpoint import load_checkpoint, save_checkpoint
from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.trainers.config import TrainConfig

__all__ = ["RunDir", "METRIC_FIELDS"]

METRIC_FIELDS = ["epoch", "round", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                 "seconds"]


class RunDir:
    """Reads and writes one run folder; nothing else touches its files."""

    def __init__(self, path: Path):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.csv")
    last_path = property(lambda self: self.path / "last.pt")
    best_path = property(lambda self: self.path / "best.pt")
    curves_path = property(lambda self: self.path / "curves.png")
    skipped_path = property(lambda self: self.path / "skipped.csv")

    @classmethod
    def check_new(cls, path: Path) -> None:
        """Refuse a folder that already holds a run, or whose parent does not exist."""
        run = cls(path)
        if run.config_path.exists():
            raise AlexfeatError(f"{path} already holds a run: use --resume {path} to continue it, "
                                f"or choose another -o folder")
        if not run.path.parent.is_dir():
            raise AlexfeatError(f"folder {run.path.parent} does not exist")

    @classmethod
    def create(cls, path: Path, config: TrainConfig) -> "RunDir":
        """A new run folder holding ``config.json`` and an empty ``metrics.csv``."""
        cls.check_new(path)
        run = cls(path)
        run.path.mkdir(exist_ok=True)
        atomic_write_text(run.config_path, config.to_json())
        with open(run.metrics_path, "w", newline="") as f:
            csv.writer(f).writerow(METRIC_FIELDS)
        return run

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        run = cls(path)
        if not run.config_path.exists():
            raise AlexfeatError(f"{path} is not an alexfeat run folder (no config.json)")
        return run

    def config(self, **changes) -> TrainConfig:
        return TrainConfig.from_json(self.config_path.read_text(), **changes)

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

    def save_checkpoint(self, payload: dict[str, Any], best: bool) -> None:
        save_checkpoint(self.last_path, payload)
        if best:
            save_checkpoint(self.best_path, payload)

    def load_last(self) -> dict[str, Any]:
        if not self.last_path.exists():
            raise AlexfeatError(f"{self.path} has no last.pt checkpoint to resume from")
        return load_checkpoint(self.last_path)

    def checkpoints(self) -> list[Path]:
        """The checkpoint files in the folder (last.pt, best.pt and any kept snapshots), by name."""
        return sorted(self.path.glob("*.pt"))

    def write_skipped(self, skipped: list[tuple[str, str]]) -> None:
        with open(self.skipped_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "reason"])
            writer.writerows(skipped)


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

