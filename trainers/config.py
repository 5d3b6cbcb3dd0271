"""Every setting of a training run, saved as RUN_DIR/config.json."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from alexfeat.choices import DEVICES, PRECISIONS, RESIZE_MODES
from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.sources.samples import check_subset

__all__ = ["TrainConfig", "OPTIMIZERS", "AUGMENTS", "LR_SCHEDULES", "SCHEDULES", "PRECISIONS", "RECIPES",
           "MODE_SETTINGS", "apply_recipe", "recipe_flags"]

OPTIMIZERS = ("sgd", "adam", "adamw")
AUGMENTS = ("none", "flip", "standard", "strong")
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
    "precision": PRECISIONS,
}

# Settings one trainer has and the other has not: config.json records only its own trainer's, and a value
# other than the default for the other trainer's is refused (it would be ignored).
MODE_SETTINGS: dict[str, frozenset[str]] = {
    "scratch": frozenset({"dropout", "width_mult", "grayscale", "batch_norm", "recipe"}),
    "finetune": frozenset({"weights", "schedule", "epochs_per_round", "until", "discriminative_lr", "lr_decay",
                           "train_bn"}),
}
_COMMANDS = {"scratch": "train-scratch", "finetune": "finetune"}

# Named presets: settings a recipe gives every option the user did not set. "small-data" is the
# from-scratch recipe chosen on a validation split of dogs-vs-cats train/ (docs/benchmarks.md, "Results on the
# reference protocol"), at 112 px: the same settings with --mixup 0.2 --cutmix 1 reached 83.75%
# validation accuracy after 120 epochs, without them 85.25%; 220 epochs instead of 120, 86.50%; 30 more
# epochs of weight averaging at 0.01 (lr / 2): 90.25% at a 144 px test crop with flip TTA (89.25% before;
# at 0.005, 90.00%; at 0.002, 89.75%).
RECIPES: dict[str, dict] = {
    "small-data": dict(batch_norm=True, augment="strong", label_smoothing=0.1, warmup_epochs=3,
                       lr_schedule="cosine", optimizer="sgd", lr=0.02, weight_decay=5e-4, epochs=250, swa_from=221),
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
    epochs: int = 80  # in total, for every schedule (layer-wise divides them among its rounds)
    epochs_per_round: int | None = None  # layer-wise: instead of dividing --epochs, this many per round
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
    warmup_epochs: int = 0  # linear warm-up of the learning rate, then lr_schedule over the rest
    mixup: float = 0.0  # Beta(alpha, alpha) of MixUp; 0: off
    cutmix: float = 0.0  # Beta(alpha, alpha) of CutMix; 0: off (both on: one of them per batch)
    batch_norm: bool = False  # scratch AlexNet: batch-norm after each convolution
    recipe: str | None = None  # the preset the settings came from (already applied)
    swa_from: int = 0  # stochastic weight averaging from this epoch on, at the constant rate swa_lr; 0: off
    swa_lr: float | None = None  # None: lr / 2
    keep_every: int = 0  # also keep epoch_N.pt every this many epochs; 0: only last.pt and best.pt
    val_split: float = 0.0
    limit: int | None = None  # only this many images of each folder (samples.subset_indices)
    per_class: int | None = None  # only the first this many images of each class of each folder
    seed: int = 0
    device: str = "auto"
    precision: str | None = None
    workers: int | None = None
    cache: bool | None = None  # None: cache decoded images when they fit in memory
    quiet: bool = False

    def __post_init__(self) -> None:
        for field in fields(self):  # nan and inf pass every range check below
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise AlexfeatError(f"--{field.name.replace('_', '-')} must be a finite number, not {value}")
        for name in ("lr", "lr_decay"):
            if getattr(self, name) <= 0:
                raise AlexfeatError(f"--{name.replace('_', '-')} must be positive")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices and not (name == "precision" and self.precision is None):
                raise AlexfeatError(f"unknown {name.replace('_', '-')} {getattr(self, name)!r}: "
                                    f"use {', '.join(choices)}")
        for mode, names in MODE_SETTINGS.items():
            if mode != self.mode:
                for field in fields(self):
                    if field.name in names and getattr(self, field.name) != field.default:
                        raise AlexfeatError(f"--{field.name.replace('_', '-')} applies to {_COMMANDS[mode]} only")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise AlexfeatError(f"unknown recipe {self.recipe!r}: use {', '.join(RECIPES)}")
        if not 0.0 <= self.val_split < 1.0:
            raise AlexfeatError("--val-split must be in [0, 1)")
        if not 0.0 <= self.dropout < 1.0:
            raise AlexfeatError("--dropout must be in [0, 1)")
        check_subset(self.limit, self.per_class)
        if self.width_mult <= 0:
            raise AlexfeatError("--width-mult must be positive")
        if min(self.epochs, self.epochs_per_round or 1, self.batch_size, self.image_size or 1) < 1:
            raise AlexfeatError("--epochs, --epochs-per-round, --batch-size and --image-size must be at least 1")
        if min(self.warmup_epochs, self.mixup, self.cutmix, self.keep_every) < 0:
            raise AlexfeatError("--warmup-epochs, --mixup, --cutmix and --keep-every cannot be negative")
        if self.swa_from < 0 or self.swa_from > self.epochs:
            raise AlexfeatError(f"--swa-from must be between 1 and --epochs ({self.epochs}), or 0 (off)")
        if self.swa_lr is not None and self.swa_lr <= 0:
            raise AlexfeatError("--swa-lr must be positive")
        if self.swa_lr is not None and not self.swa_from:
            raise AlexfeatError("--swa-lr is the rate of the weight-averaging epochs: give --swa-from too")
        if self.swa_from and self.mode == "finetune" and self.schedule != "full":
            raise AlexfeatError("--swa-from applies to train-scratch and finetune --schedule full (one round "
                                "training every layer)")
        if self.batch_norm and self.model != "alexnet":
            raise AlexfeatError("--batch-norm applies to the alexnet topology only")

    def check_new_run(self) -> None:
        """Rules for a run about to start; run folders written before them stay readable."""
        if self.warmup_epochs and self.warmup_epochs >= self.scheduled_epochs:
            raise AlexfeatError(f"--warmup-epochs {self.warmup_epochs} leaves no epoch of the {self.lr_schedule} "
                                f"schedule, which runs over {self.scheduled_epochs} epochs (--epochs"
                                f"{' before --swa-from' if self.swa_from else ''}): use fewer")

    @property
    def layerwise(self) -> bool:
        """Fine-tuning one more layer group per round (its epochs divided among the rounds)."""
        return self.mode == "finetune" and self.schedule == "layerwise"

    @property
    def scheduled_epochs(self) -> int:
        return scheduled_epochs(self.epochs, self.swa_from)

    @property
    def averaging_lr(self) -> float:
        """The constant learning rate of the weight-averaging epochs."""
        return self.swa_lr if self.swa_lr is not None else self.lr / 2

    def to_json(self) -> str:
        """Every setting of this trainer (none of the other trainer's: see ``MODE_SETTINGS``)."""
        foreign = set().union(*(names for mode, names in MODE_SETTINGS.items() if mode != self.mode))
        data = {k: v for k, v in asdict(self).items() if k not in foreign}
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
        if data.get("precision") == "auto" and "limit" not in data:
            # Written before --limit and before "auto" followed the CPU (then: bf16 on CUDA, fp32 on the CPU,
            # today's default): a resumed run keeps the precision it started in.
            data["precision"] = None
        return replace(cls(**{k: v for k, v in data.items() if k in names}), **changes)


def recipe_flags(name: str) -> str:
    """The options a recipe sets, as command-line flags (what the help and docs/training.md show)."""
    flags = []
    for key, value in RECIPES[name].items():
        flag = "--" + key.replace("_", "-")
        flags.append(flag if value is True else f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join(flags)


def apply_recipe(options: dict, given: set[str]) -> dict:
    """``options`` with the named ``recipe``'s settings for every option the user did not give."""
    recipe = options.get("recipe")
    if recipe is None:
        return options
    if recipe not in RECIPES:
        raise AlexfeatError(f"unknown recipe {recipe!r}: use {', '.join(RECIPES)}")
    settings = {k: v for k, v in RECIPES[recipe].items() if k not in given}
    if "swa_from" in settings and "epochs" in given:  # your --epochs: the same share of them averaged, at the end
        total, averaged = RECIPES[recipe]["epochs"], RECIPES[recipe]["epochs"] - RECIPES[recipe]["swa_from"] + 1
        epochs = options["epochs"]
        settings["swa_from"] = epochs - max(1, round(epochs * averaged / total)) + 1 if epochs > 1 else 0
    if "warmup_epochs" in settings:  # a warm-up that leaves a short schedule some epochs of its own
        merged = {**options, **settings}
        scheduled = scheduled_epochs(merged["epochs"], merged.get("swa_from", 0))
        settings["warmup_epochs"] = min(settings["warmup_epochs"], max(0, scheduled - 1))
    return {**options, **settings}


def scheduled_epochs(epochs: int, swa_from: int) -> int:
    """The epochs the learning-rate schedule (warm-up included) runs over: those before --swa-from."""
    return swa_from - 1 if swa_from else epochs
