"""Every setting of a training run, saved as RUN_DIR/config.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from alexfeat.featurizer.choices import DEVICES, RESIZE_MODES
from alexfeat.featurizer.errors import AlexfeatError

__all__ = ["TrainConfig", "OPTIMIZERS", "AUGMENTS", "LR_SCHEDULES", "SCHEDULES"]

OPTIMIZERS = ("sgd", "adam", "adamw")
AUGMENTS = ("none", "flip", "standard")
LR_SCHEDULES = ("constant", "cosine", "step")
SCHEDULES = ("layerwise", "head", "full")  # finetune

_CHOICES = {
    "mode": ("scratch", "finetune"),
    "optimizer": OPTIMIZERS,
    "augment": AUGMENTS,
    "resize_mode": RESIZE_MODES,
    "lr_schedule": LR_SCHEDULES,
    "schedule": SCHEDULES,
    "device": DEVICES,
}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of ``train-scratch`` (mode "scratch") and ``finetune`` (mode "finetune")."""

    mode: str
    train_dir: Path
    test_dir: Path
    out: Path
    model: str = "alexnet"
    weights: str = "imagenet"  # finetune only
    epochs: int = 80  # scratch, and finetune --schedule head|full
    epochs_per_round: int = 2  # finetune --schedule layerwise
    schedule: str = "layerwise"
    until: str | None = None  # layerwise: the deepest group to unfreeze
    discriminative_lr: bool = False
    lr_decay: float = 0.5  # discriminative: each group below the head gets lr * decay**depth
    train_bn: bool = False  # finetune: let batch-norm layers re-estimate their statistics
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    batch_size: int = 64
    weight_decay: float = 5e-4
    dropout: float = 0.5
    augment: str = "standard"
    balanced: bool = False
    width_mult: float = 1.0
    grayscale: bool = False
    resize_mode: str = "crop"
    image_size: int | None = None  # None: 224 from scratch, the pretrained weights' own crop when fine-tuning
    mean: tuple[float, ...] | None = None  # None: ImageNet's, or the pretrained weights' own
    std: tuple[float, ...] | None = None
    label_smoothing: float = 0.0
    lr_schedule: str = "cosine"
    val_split: float = 0.0
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    cache: bool | None = None  # None: cache decoded images when they fit in memory
    quiet: bool = False

    def __post_init__(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise AlexfeatError(f"unknown {name.replace('_', '-')} {getattr(self, name)!r}: "
                                    f"use {', '.join(choices)}")
        if not 0.0 <= self.val_split < 1.0:
            raise AlexfeatError("--val-split must be in [0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            raise AlexfeatError("--dropout must be in [0, 1)")
        if self.width_mult <= 0:
            raise AlexfeatError("--width-mult must be positive")
        if min(self.epochs, self.epochs_per_round, self.batch_size, self.image_size or 1) < 1:
            raise AlexfeatError("--epochs, --epochs-per-round, --batch-size and --image-size must be at least 1")

    def to_json(self) -> str:
        data = asdict(self)
        for key in ("train_dir", "test_dir", "out"):
            data[key] = str(data[key])
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str, **changes) -> "TrainConfig":
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        for key in ("train_dir", "test_dir", "out"):
            data[key] = Path(data[key])
        for key in ("mean", "std"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return replace(cls(**{k: v for k, v in data.items() if k in names}), **changes)
