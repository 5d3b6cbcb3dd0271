"""The alexfeat checkpoint file: weights plus everything needed to rebuild the network."""

from __future__ import annotations

import re
import textwrap
import warnings
from pathlib import Path
from typing import Any

import torch

from alexfeat.featurizer.atomic import atomic_output
from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.model_files import existing_file

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "load_tensors", "is_checkpoint",
           "export_weights"]

CHECKPOINT_FORMAT = "alexfeat-checkpoint-v1"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (must hold ``state_dict`` and ``arch``) atomically to ``path``."""
    with atomic_output(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint or a plain state dict (returned as ``{"state_dict": ...}``).

    Only tensors and plain containers are unpickled (``weights_only=True``). Tensors are
    memory-mapped (pages load when first used: 2 ms instead of 130 ms for AlexNet's 244 MB).
    Raises AlexfeatError for a file that is not one.
    """
    existing_file(path, "checkpoint")
    try:
        data = load_tensors(path)
    except Exception as exc:  # torch.load raises many types for files that are not checkpoints
        raise _unreadable(path, exc) from None
    if is_checkpoint(data):
        return data
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        return {"state_dict": data["state_dict"]}
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        return {"state_dict": data["model"]}
    return {"state_dict": data}


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


def export_weights(checkpoint: Path, out: Path) -> dict[str, Any]:
    """Write the plain state dict of ``checkpoint`` to ``out`` (what torch, timm and ``--weights`` load).

    Returns the checkpoint's other entries (arch, classes, metrics) for the caller to report.
    """
    from alexfeat.featurizer.models import Arch

    data = load_checkpoint(checkpoint)
    with atomic_output(out) as tmp:
        torch.save({k: v.clone() for k, v in data["state_dict"].items()}, tmp)  # clone: not the mmap'ed file
    arch = Arch.from_dict(data.get("arch", {}))
    if unusual := arch.unnamed_settings:
        warnings.warn(f"{out} holds {arch.model} weights that no --model describes ({', '.join(unusual)}): featurize "
                      f"--weights cannot rebuild it from this file; use featurize --weights {checkpoint}",
                      UserWarning, stacklevel=2)
    return {k: v for k, v in data.items() if k != "state_dict"}
