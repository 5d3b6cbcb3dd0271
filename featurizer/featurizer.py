"""The Featurizer: a network loaded once, cut at the requested layers, fed uint8 image batches."""

from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import replace
from typing import Callable, TypeVar

import numpy as np
import torch

from alexfeat.choices import POOLS, TTAS, check_choice
from alexfeat.featurizer.decode import Preprocess
from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.device import cpu_bf16, resolve_precision
from alexfeat.featurizer.layers import LayerExtractor
from alexfeat.featurizer.backends import LoadedModel
from alexfeat.featurizer.models import layer_nodes, load_by_name

__all__ = ["Featurizer", "build_featurizer", "apply_overrides", "check_input_size", "default_layers", "precision_note"]

T = TypeVar("T")


def default_layers(model: str) -> tuple[str, ...]:
    return ("pool5", "fc6", "fc7") if model == "alexnet" else ("pre_logits",)


def apply_overrides(pre: Preprocess, resize: int | None = None, crop: int | None = None,
                    mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> Preprocess:
    """``pre`` with the given settings replaced; a new crop alone keeps the resize/crop ratio."""
    changes = {k: v for k, v in dict(resize=resize, crop=crop, mean=mean, std=std).items() if v is not None}
    if "crop" in changes and "resize" not in changes:
        changes["resize"] = pre.resize_for(changes["crop"])
    return replace(pre, **changes)


def check_input_size(forward: Callable[[int], T], model: str, size: int, default: int, flag: str = "--crop") -> T:
    """``forward(size)``, which runs one blank ``size`` x ``size`` image through the network; if the network
    cannot take that size, a one-line AlexfeatError naming a size it takes (``flag`` is the option that set it)."""
    try:
        return forward(size)
    except (RuntimeError, AssertionError) as e:  # too small for the pooling, a fixed-size network (ViT), memory
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    # A graph traced by torchvision's feature extraction words the size it got as "Proxy(getitem_2)".
    reason = re.sub(r"Proxy\([^)]*\)", str(size), reason)
    if (smallest := _smallest_size(forward, above=size)) is not None:
        reason += f"; the smallest {flag} it runs on is {smallest}"
    elif default != size and _runs(forward, default):
        reason += f"; it runs on {flag} {default}, its default"
    raise AlexfeatError(f"{model} cannot run on {size}x{size} inputs ({flag}): {reason}")


def _runs(forward: Callable[[int], object], size: int) -> bool:
    try:
        forward(size)
        return True
    except (RuntimeError, AssertionError):
        return False


def _smallest_size(forward: Callable[[int], object], above: int, limit: int = 512) -> int | None:
    """The smallest size in (``above``, ``limit``] the network runs on; None if it fails at ``limit`` too
    (a network built for one size, or a failure that is not about size)."""
    if above >= limit or not _runs(forward, limit):
        return None
    fails, works = above, limit
    while works - fails > 1:  # the pooling arithmetic only gets easier as the input grows
        middle = (fails + works) // 2
        if _runs(forward, middle):
            works = middle
        else:
            fails = middle
    return works


class Featurizer:
    """A loaded network cut at the requested layers, ready for uint8 image batches.

    ``precision`` (``--precision``, resolved by ``device.resolve_precision``): "fp32", or "bf16": on CUDA
    under autocast, on the CPU with the network cast to bfloat16. Features come out float32 either way.
    ``tta="flip"``: each layer's activations are the mean of the image's and its mirror image's (two
    forward passes per batch); a store records it, and whatever uses its features computes them so.
    """

    def __init__(self, loaded: LoadedModel, layers: tuple[str, ...], pre: Preprocess, pool: str, device: torch.device,
                 compile: bool = False, precision: str | None = None, tta: str = "none"):
        check_choice("--pool", pool, POOLS)
        self.tta = check_choice("--tta", tta, TTAS)
        self.loaded, self.layers, self.pre, self.device = loaded, layers, pre, device
        self.precision = resolve_precision(precision, device)
        nodes = layer_nodes(loaded.net, loaded.arch.model, list(layers), pool)
        self.module = LayerExtractor(loaded.net, nodes, pre, pool).to(device).eval()
        # oneDNN's convolutions are ~1.5x faster in channels-last on the CPU; cuDNN prefers it too.
        self.module = self.module.to(memory_format=torch.channels_last)
        self._autocast = self.precision == "bf16" and device.type == "cuda"
        if self.precision == "bf16" and not self._autocast:
            self.module.to_bfloat16()
        self._copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        described = check_input_size(self._describe, loaded.arch.model, pre.crop, loaded.preprocess.crop)
        # Broken weights are refused here, before a store or a server exists.
        _finite({layer: x.float().cpu().numpy() for layer, (x, _) in described.items()})
        self.dims = {layer: x.shape[1] for layer, (x, _) in described.items()}
        # Per layer, what --pool did (the store records it): "avg"/"max", "flatten" or "none".
        self.pooling = {layer: reduction for layer, (_, reduction) in described.items()}
        if compile:
            # Batch shapes are fixed but for the last one: static shapes compile faster kernels.
            self.module = torch.compile(self.module, dynamic=False)

    def _describe(self, crop: int) -> dict[str, tuple[torch.Tensor, str]]:
        """One blank ``crop`` x ``crop`` image through the network: {layer: (activation, reduction)}."""
        with torch.inference_mode():
            return self.module.describe(torch.zeros(1, self.pre.channels, crop, crop, dtype=torch.uint8,
                                                    device=self.device))

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        return self.submit(images)()

    @torch.inference_mode()
    def submit(self, images: torch.Tensor, dtype: str = "float32") -> Callable[[], dict[str, np.ndarray]]:
        """Start the forward pass on ``images``; the returned function gives {layer: [B, D] ``dtype``}.

        On CUDA the activations are cast on the GPU and copied into pinned host memory on a side
        stream, so the next batch's forward pass runs while this one is copied and written; the
        returned function waits for the copy only. On the CPU everything is done on return.
        """
        out = self._forward(images)
        if self._copy_stream is None:
            ready = _finite({layer: x.numpy().astype(dtype, copy=False) for layer, x in out.items()})
            return lambda: ready
        fetch = self._copy_to_host(out, getattr(torch, dtype))
        return lambda: _finite(fetch())

    def _forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self._autocast else nullcontext()
        with autocast:
            out = {layer: x.float() for layer, x in self.module(images).items()}
            if self.tta == "flip":  # the mirror image: the width axis of [B, C, H, W] reversed
                mirrored = self.module(images.flip(-1))
                out = {layer: (x + mirrored[layer].float()) / 2 for layer, x in out.items()}
            return out

    def _copy_to_host(self, out: dict[str, torch.Tensor], dtype: torch.dtype) -> Callable[[], dict[str, np.ndarray]]:
        stream = self._copy_stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        host = {}
        with torch.cuda.stream(stream):
            for layer, x in out.items():
                x.record_stream(stream)  # keeps the caching allocator from reusing x before the copy ends
                # Pinned blocks come from torch's caching host allocator, which reuses one only
                # after the copy recorded on it has finished.
                host[layer] = torch.empty(x.shape, dtype=dtype, pin_memory=True)
                host[layer].copy_(x.to(dtype), non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)

        def result() -> dict[str, np.ndarray]:
            done.synchronize()
            return {layer: t.numpy() for layer, t in host.items()}
        return result


# bench/featurize.py on a 2-core Intel Xeon with AMX (docs/precision.md): alexfeat end to end, AlexNet fc7,
# bf16 over fp32 in the same run. Measuring it in each run would cost seconds (a network copy, oneDNN's
# bf16 kernels set up) for a hint.
BF16_SPEEDUP_MEASURED = "2.2-2.5x"


def precision_note(fz: Featurizer) -> str:
    """One line on what bf16 would do on this CPU, for a run summary ("" on CUDA, or where it says nothing new):
    on a CPU with native bf16 running fp32, that bf16 is there and what it measured; on one without, that
    ``--precision bf16`` is emulated."""
    native = cpu_bf16()
    if fz.device.type != "cpu":
        return ""
    if fz.precision == "bf16":
        return "" if native else "this CPU has no native bf16 (AMX or AVX512-BF16): --precision bf16 is emulated here"
    if not native:
        return ""
    return (f"this CPU computes bf16 natively ({native}): --precision auto (bf16 here) featurized "
            f"{BF16_SPEEDUP_MEASURED} faster on a 2-core Xeon with AMX, features within cosine 0.99 of fp32 "
            f"(docs/precision.md)")


def _finite(feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Refuse NaN or infinite activations (checked on the host copy: no GPU sync per batch)."""
    for layer, x in feats.items():
        if not np.isfinite(x).all():
            raise AlexfeatError(f"layer {layer} produced NaN or infinite activations; the weights or the "
                                f"preprocessing are broken (check --weights, --mean and --std), or they "
                                f"overflow --dtype float16")
    return feats


def build_featurizer(model: str | None, weights: str, layers: tuple[str, ...], pool: str, device: torch.device,
                     seed: int = 0, download: bool = True, overrides: dict | None = None,
                     compile: bool = False, precision: str | None = None, tta: str = "none") -> Featurizer:
    """Load ``model`` with ``weights`` and cut it at ``layers`` (preprocessing overrides optional)."""
    loaded = load_by_name(model, weights, seed=seed, download=download)
    pre = apply_overrides(loaded.preprocess, **(overrides or {}))
    return Featurizer(loaded, layers or default_layers(loaded.arch.model), pre, pool, device, compile, precision, tta)
