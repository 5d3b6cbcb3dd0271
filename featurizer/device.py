"""Where the network runs, in which precision, how many processes decode for it, and where JPEGs are decoded."""

from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path

import torch

from alexfeat.choices import DECODES, DEVICES, PRECISIONS, check_choice
from alexfeat.errors import AlexfeatError

__all__ = ["resolve_device", "resolve_precision", "cpu_bf16", "resolve_decode", "default_workers", "default_threads"]


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``; AlexfeatError when CUDA is asked for but absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AlexfeatError("--device cuda asked for, but PyTorch sees no CUDA device")
    check_choice("--device", device, DEVICES)
    return torch.device(device)


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """``--precision`` made concrete, "fp32" or "bf16": the one rule featurize, predict, evaluate, serve and
    the trainers share. ``auto`` is bf16 wherever the device computes it natively: a CUDA device with bf16,
    or a CPU with AMX or AVX512-BF16 (``cpu_bf16``), and fp32 elsewhere. Not given (None), the default: bf16
    on such a CUDA device and fp32 on every CPU, so that a store's features do not depend on which CPU made
    them (docs/precision.md has the measurements that chose it). ``bf16`` runs in bfloat16 on any device
    (emulated, and slower, on a CPU without native bf16)."""
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision is None:
        return "bf16" if cuda_bf16 else "fp32"
    check_choice("--precision", precision, PRECISIONS)
    if precision != "auto":
        return precision
    return "bf16" if cuda_bf16 or (device.type == "cpu" and cpu_bf16() is not None) else "fp32"


@cache
def cpu_bf16() -> str | None:
    """How this CPU computes bfloat16 natively: "AMX" (Intel Sapphire Rapids and later), "AVX512-BF16"
    (Intel Cooper Lake, AMD Zen 4 and later), or None (bf16 is emulated in fp32 there). Read from the
    kernel's CPU flags (``/proc/cpuinfo``); elsewhere (macOS, Windows) from PyTorch's own CPU probe."""
    try:
        first_cpu = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
        flags = set(next(line for line in first_cpu.splitlines() if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration, IndexError):
        probes = {"amx_tile": "_is_amx_tile_supported", "amx_bf16": "_is_amx_tile_supported",
                  "avx512_bf16": "_is_avx512_bf16_supported"}
        flags = {flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)()}
    return _bf16_from_flags(flags)


def _bf16_from_flags(flags: set[str]) -> str | None:
    if {"amx_bf16", "amx_tile"} <= flags:
        return "AMX"
    return "AVX512-BF16" if "avx512_bf16" in flags else None


def resolve_decode(decode: str, device: torch.device) -> str:
    """``auto`` (on the GPU when the network runs on CUDA), ``cpu`` or ``gpu``; "cpu" or "gpu"."""
    check_choice("--decode", decode, DECODES)
    if decode == "gpu" and device.type != "cuda":
        raise AlexfeatError("--decode gpu needs the network on a CUDA device (--device cuda); "
                            "use --decode cpu or auto here")
    if decode == "auto":
        return "gpu" if device.type == "cuda" else "cpu"
    return decode


# CPU milliseconds per image (bench/featurize.py, 2-core Xeon with AMX): decoding, resizing and cropping a
# photo of about 400x360, and AlexNet's forward pass to fc7 at batch 64 in each precision (quiet machine).
_DECODE_MS = 1.25
_FORWARD_MS = {"fp32": 8.3, "bf16": 1.7}


def default_workers(device: torch.device, decode: str = "cpu", precision: str = "fp32") -> int:
    """Decoding processes. On the CPU the network and decoding share the cores: the workers get the
    share of them that decoding takes of an image's CPU time (measured per stage: ``_DECODE_MS``,
    ``_FORWARD_MS``), so a bf16 network, 5x cheaper, gets more of them; never fewer than one per two
    cores up to 4 (measured fastest for fp32 on 2 cores). With the network on a GPU, decoding is the
    limit: all the cores, or a few when the workers only read bytes for nvJPEG."""
    cores = os.cpu_count() or 1
    if device.type != "cuda":
        share = _DECODE_MS / (_DECODE_MS + _FORWARD_MS.get(precision, _FORWARD_MS["fp32"]))
        return max(1, min(4, cores // 2), min(cores - 1, math.ceil(cores * share)))
    return min(4, cores) if decode == "gpu" else min(16, cores)


def default_threads(device: torch.device, workers: int) -> int:
    """Torch threads for the forward pass: on the CPU every core (decoding workers fill the gaps
    between operators, and OMP_WAIT_POLICY=PASSIVE lets them); on a GPU one launches the kernels."""
    cores = os.cpu_count() or 1
    return cores if device.type != "cuda" else max(1, min(4, cores - workers))
