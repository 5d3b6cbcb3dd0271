"""The alexfeat checkpoint file: weights plus everything needed to rebuild the network.

``Checkpoint`` owns the format: ``Checkpoint.read`` is its only reader and ``Checkpoint.write`` its only
writer. On disk it is the dict ``torch.save`` writes, ``{"format": "alexfeat-checkpoint-v1", <field>: value}``
with a key per field that is set (``arch`` and ``preprocess`` as plain dicts), so files of every alexfeat
version load in every other.
"""

from __future__ import annotations

import json
import re
import textwrap
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from alexfeat.atomic import atomic_output
from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.arch import Arch
from alexfeat.featurizer.decode import Preprocess
from alexfeat.paths import existing_file

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "describe_checkpoint", "export_weights", "load_tensors",
           "is_checkpoint"]

CHECKPOINT_FORMAT = "alexfeat-checkpoint-v1"
# What only resume reads (last.pt); best.pt and epoch_N.pt go without it, about the size of the weights.
_RESUME_ONLY = ("optimizer", "scheduler", "round", "round_epoch", "train_state_dict", "swa_count")


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """One checkpoint: the weights, and what rebuilds and resumes the network.

    A field left None is not in the file. A plain state dict (a foreign ``.pth``) reads as a Checkpoint
    with only ``state_dict``; ``arch`` None tells it apart. Fields in the order the file holds them.
    """

    arch: Arch | None = None  # None: a plain state dict, whose architecture the caller names
    state_dict: dict[str, torch.Tensor] = field(repr=False)  # memory-mapped when read: pages load when first used
    preprocess: Preprocess | None = None
    classes: tuple[str, ...] | None = None  # the class of each output, by index
    epoch: int | None = None  # epochs trained in all (0: the initial weights)
    round: int | None = None  # 1-based round of the last epoch; with round_epoch: where resume continues
    round_epoch: int | None = None
    optimizer: dict | None = field(default=None, repr=False)  # state dicts; None before the first epoch
    scheduler: dict | None = field(default=None, repr=False)
    best: dict | None = None  # {"metric", "value", "epoch"} of the run's best epoch so far
    metrics: dict | None = None  # the metrics.csv row of this epoch
    config: dict | None = None  # the run's TrainConfig as JSON data
    train_state_dict: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # while averaging: the
    # weights being trained (``state_dict`` then holds their average)
    swa_count: int | None = None  # how many epochs the average holds

    @classmethod
    def read(cls, path: Path) -> "Checkpoint":
        """Read a checkpoint or a plain state dict (also one under a ``state_dict`` or ``model`` key).

        Only tensors and plain containers are unpickled (``weights_only=True``). Tensors are
        memory-mapped (pages load when first used: 2 ms instead of 130 ms for AlexNet's 244 MB).
        Raises AlexfeatError for a missing file or one that is not a checkpoint.
        """
        existing_file(path, "checkpoint")
        try:
            data = load_tensors(path)
        except Exception as exc:  # torch.load raises many types for files that are not checkpoints
            raise _unreadable(path, exc) from None
        if is_checkpoint(data):
            return cls.from_dict(data)
        for key in ("state_dict", "model"):  # Lightning-style and torchvision-reference-style files
            if isinstance(data, dict) and isinstance(data.get(key), dict):
                return cls(state_dict=data[key])
        return cls(state_dict=data)

    def write(self, path: Path) -> None:
        """Write atomically to ``path``: a reader sees the old file or the whole new one."""
        with atomic_output(path) as tmp:
            torch.save(self.to_dict(), tmp)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Checkpoint":
        """From the dict of a checkpoint file (keys it does not know are left out)."""
        known = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        if known.get("arch") is not None:
            known["arch"] = Arch.from_dict(known["arch"])
        if known.get("preprocess") is not None:
            known["preprocess"] = Preprocess.from_dict(known["preprocess"])
        if known.get("classes") is not None:
            known["classes"] = tuple(known["classes"])
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        """The dict a checkpoint file holds: ``format``, then every field that is set. A resume checkpoint
        (``round`` set) holds ``optimizer`` and ``scheduler`` even before the first epoch, as None."""
        data: dict[str, Any] = {"format": CHECKPOINT_FORMAT}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and not (f.name in ("optimizer", "scheduler") and self.round is not None):
                continue
            data[f.name] = value
        if self.arch is not None:
            data["arch"] = self.arch.to_dict()
        if self.preprocess is not None:
            data["preprocess"] = asdict(self.preprocess)
        if self.classes is not None:
            data["classes"] = list(self.classes)
        return data

    def lean(self) -> "Checkpoint":
        """This checkpoint without what only resume reads (for best.pt and epoch_N.pt)."""
        return replace(self, **dict.fromkeys(_RESUME_ONLY))


def describe_checkpoint(path: Path) -> list[str]:
    """Lines describing the checkpoint or plain state dict at ``path`` (for ``alexfeat info``)."""
    ckpt = Checkpoint.read(path)
    if ckpt.arch is None:
        n = sum(getattr(v, "numel", lambda: 0)() for v in ckpt.state_dict.values())
        return [f"plain state dict {path}: {len(ckpt.state_dict)} tensors, {n:,} values"]
    lines = [f"checkpoint {path}: {json.dumps(ckpt.arch.to_dict())}",
             f"  classes: {', '.join(ckpt.classes or ())}",
             f"  preprocess: {json.dumps(asdict(ckpt.preprocess) if ckpt.preprocess else {})}"]
    for key in ("epoch", "round", "metrics"):
        if (value := getattr(ckpt, key)) is not None:
            lines.append(f"  {key}: {json.dumps(value)}")
    swa_from = (ckpt.config or {}).get("swa_from") or 0
    epoch = ckpt.epoch or 0
    if swa_from and epoch >= swa_from:
        epochs = f"epochs {swa_from}-{epoch}" if epoch > swa_from else f"epoch {swa_from}"
        lines.append(f"  weights: the mean of those after {epochs} (--swa-from)")
    return lines


def _unreadable(path: Path, exc: Exception) -> AlexfeatError:
    """Two lines instead of torch's page: what the file is not, and what to do."""
    foreign = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if foreign:
        return AlexfeatError(f"{path} holds Python objects besides tensors ({foreign.group(1)}), which alexfeat does "
                             f"not unpickle (that would run code from the file);\nsave only the weights: "
                             f"torch.save(model.state_dict(), PATH)")
    return AlexfeatError(f"{path} is not a PyTorch state dict or alexfeat checkpoint (torch could not read it: "
                         f"{_reason(exc)})")


def _reason(exc: Exception) -> str:
    """Why torch could not read a file, in a few words: torch's messages run to a page, and cut short
    they end mid-word."""
    text = str(exc).strip()
    if "zip archive" in text:
        return "a truncated or corrupt zip archive"
    if "Unsupported operand" in text or isinstance(exc, EOFError):  # not a pickle at all, or an empty file
        return "not a PyTorch file"
    first = text.splitlines()[0] if text else ""
    return type(exc).__name__ + (": " + textwrap.shorten(first, 100, placeholder=" ...") if first else "")


def load_tensors(path: Path) -> Any:
    """``torch.load`` memory-mapped where the file allows it (zip format), read whole otherwise."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc) and "zip" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def is_checkpoint(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT


def export_weights(checkpoint: Path, out: Path) -> Checkpoint:
    """Write the plain state dict of ``checkpoint`` to ``out`` (what torch, timm and ``--weights`` load).

    Returns the checkpoint read (arch, classes, metrics) for the caller to report.
    """
    ckpt = Checkpoint.read(checkpoint)
    with atomic_output(out) as tmp:
        torch.save({k: v.clone() for k, v in ckpt.state_dict.items()}, tmp)  # clone: not the mmap'ed file
    arch = ckpt.arch or Arch()
    if unusual := arch.unnamed_settings:
        warnings.warn(f"{out} holds {arch.model} weights that no --model describes ({', '.join(unusual)}): featurize "
                      f"--weights cannot rebuild it from this file; use featurize --weights {checkpoint}",
                      UserWarning, stacklevel=2)
    return ckpt
