"""Where the network runs and how many processes decode for it."""

from __future__ import annotations

import os

import torch

from alexfeat.featurizer.errors import AlexfeatError

__all__ = ["resolve_device", "default_workers"]


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``; AlexfeatError when CUDA is asked for but absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AlexfeatError("--device cuda asked for, but PyTorch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise AlexfeatError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def default_workers(device: torch.device) -> int:
    """Decoding processes: on the CPU the network competes with decoding for the same cores
    (decoding is ~6% of AlexNet's work); on a GPU, decoding is the limit."""
    cores = os.cpu_count() or 1
    return min(8, cores) if device.type == "cuda" else max(1, min(4, cores // 2))
