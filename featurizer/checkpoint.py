"""The alexfeat checkpoint file: weights plus everything needed to rebuild the network."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "is_checkpoint"]

CHECKPOINT_FORMAT = "alexfeat-checkpoint-v1"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (must hold ``state_dict`` and ``arch``) atomically to ``path``."""
    path = Path(path)
    data = {"format": CHECKPOINT_FORMAT, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(data, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint or a plain state dict (returned as ``{"state_dict": ...}``).

    Only tensors and plain containers are unpickled (``weights_only=True``).
    """
    data = torch.load(path, map_location="cpu", weights_only=True)
    if is_checkpoint(data):
        return data
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        return {"state_dict": data["state_dict"]}
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        return {"state_dict": data["model"]}
    return {"state_dict": data}


def is_checkpoint(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT
