"""The Featurizer: a network loaded once, cut at the requested layers, fed uint8 image batches."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import torch

from alexfeat.featurizer.decode import Preprocess
from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.extract import LayerExtractor
from alexfeat.featurizer.models import Arch, LoadedModel, layer_nodes, load_model

__all__ = ["Featurizer", "build_featurizer", "apply_overrides", "default_layers"]


def default_layers(model: str) -> tuple[str, ...]:
    return ("pool5", "fc6", "fc7") if model == "alexnet" else ("pre_logits",)


def apply_overrides(pre: Preprocess, resize: int | None = None, crop: int | None = None,
                    mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> Preprocess:
    changes = {k: v for k, v in dict(resize=resize, crop=crop, mean=mean, std=std).items() if v is not None}
    for key in ("mean", "std"):
        if key in changes and len(changes[key]) != pre.channels:
            raise AlexfeatError(f"--{key} needs {pre.channels} comma-separated values, got {len(changes[key])}")
    if "crop" in changes and "resize" not in changes:
        changes["resize"] = max(changes["crop"], round(changes["crop"] * pre.resize / pre.crop))
    return replace(pre, **changes)


class Featurizer:
    """A loaded network cut at the requested layers, ready for uint8 image batches."""

    def __init__(self, loaded: LoadedModel, layers: tuple[str, ...], pre: Preprocess, pool: str, device: torch.device):
        if pool not in ("none", "avg", "max"):
            raise AlexfeatError(f"unknown --pool {pool!r}: use none, avg or max")
        self.loaded, self.layers, self.pre, self.device = loaded, layers, pre, device
        nodes = layer_nodes(loaded.net, loaded.arch.model, list(layers))
        self.module = LayerExtractor(loaded.net, nodes, pre, pool).to(device).eval()
        # oneDNN's convolutions are ~1.5x faster in channels-last on the CPU; cuDNN prefers it too.
        self.module = self.module.to(memory_format=torch.channels_last)
        self.dims = {layer: out.shape[1] for layer, out in self(torch.zeros(1, pre.channels, pre.crop, pre.crop,
                                                                            dtype=torch.uint8)).items()}

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        with autocast:
            out = self.module(images)
        return {layer: x.float().cpu().numpy() for layer, x in out.items()}


def build_featurizer(model: str, weights: str, layers: tuple[str, ...], pool: str, device: torch.device,
                     seed: int = 0, download: bool = True, overrides: dict | None = None) -> Featurizer:
    """Load ``model`` with ``weights`` and cut it at ``layers`` (preprocessing overrides optional)."""
    loaded = load_model(Arch(model=model), weights, seed=seed, download=download)
    pre = apply_overrides(loaded.preprocess, **(overrides or {}))
    return Featurizer(loaded, layers or default_layers(model), pre, pool, device)
