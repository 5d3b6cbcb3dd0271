"""Where the network runs, how many processes decode for it, and where JPEGs are decoded."""

from __future__ import annotations

import os

import torch

from alexfeat.choices import DECODES, DEVICES, check_choice
from alexfeat.errors import AlexfeatError

__all__ = ["resolve_device", "resolve_decode", "default_workers", "default_threads"]


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``; AlexfeatError when CUDA is asked for but absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AlexfeatError("--device cuda asked for, but PyTorch sees no CUDA device")
    check_choice("--device", device, DEVICES)
    return torch.device(device)


def resolve_decode(decode: str, device: torch.device) -> str:
    """``auto`` (on the GPU when the network runs on CUDA), ``cpu`` or ``gpu``; "cpu" or "gpu"."""
    check_choice("--decode", decode, DECODES)
    if decode == "gpu" and device.type != "cuda":
        raise AlexfeatError("--decode gpu needs the network on a CUDA device (--device cuda); "
                            "use --decode cpu or auto here")
    if decode == "auto":
        return "gpu" if device.type == "cuda" else "cpu"
    return decode


def default_workers(device: torch.device, decode: str = "cpu") -> int:
    """Decoding processes. On the CPU the network and decoding share the cores: one worker per
    two cores measured fastest on 2 cores (docs/benchmarks.md, "Featurize"). With the network on a GPU, decoding
    is the limit: all the cores, or a few when the workers only read bytes for nvJPEG."""
    cores = os.cpu_count() or 1
    if device.type != "cuda":
        return max(1, min(4, cores // 2))
    return min(4, cores) if decode == "gpu" else min(16, cores)


def default_threads(device: torch.device, workers: int) -> int:
    """Torch threads for the forward pass: on the CPU every core (decoding workers fill the gaps
    between operators, and OMP_WAIT_POLICY=PASSIVE lets them); on a GPU one launches the kernels."""
    cores = os.cpu_count() or 1
    return cores if device.type != "cuda" else max(1, min(4, cores - workers))
