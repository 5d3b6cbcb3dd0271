"""The torch side of the server: one loaded network (and classifier), fed decoded images in batches.

Nothing here knows about HTTP; the server's inference worker is the only caller of ``run``.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from alexfeat.featurizer.decode import DECODE_ERRORS, decode_image, failure_reason, resize_image, stack_images
from alexfeat.featurizer.device import resolve_device
from alexfeat.featurizer.sources.folders import DEFAULT_MAX_PIXELS
from alexfeat.featurizer.featurizer import Featurizer, build_featurizer
from alexfeat.serve.config import BadImage, Result, ServeConfig

if TYPE_CHECKING:
    from alexfeat.classifiers.predictor import Predictor

__all__ = ["ServedModel", "load_served_model"]


class ServedModel:
    """A Featurizer, plus the predictor (``classifiers.predictor``) that turns its features into class
    probabilities, if any.

    ``kind`` is the predictor's, "classifier" (a .joblib model) or "checkpoint" (a trainer checkpoint:
    softmax of its logits), or "features" without one; features are cast to the predictor's ``dtype``.
    """

    def __init__(self, featurizer: Featurizer, source: str, predictor: Predictor | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.featurizer, self.source, self.predictor = featurizer, source, predictor
        self.kind = predictor.kind if predictor is not None else "features"
        self.dtype = predictor.dtype if predictor is not None else "float32"
        self.max_pixels = max_pixels
        self.pre = featurizer.pre

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes if self.predictor is not None else []

    def decode(self, data: bytes) -> torch.Tensor:
        """Encoded image bytes -> the uint8 network input [C, crop, crop], exactly as featurize decodes files.

        Raises BadImage with the reason. Safe to call from several threads at once.
        """
        try:
            return resize_image(decode_image(data, self.pre.decode_size, self.pre.grayscale, self.max_pixels), self.pre)
        except DECODE_ERRORS as exc:
            # PIL names the in-memory file ("<_io.BytesIO object at 0x...>"), which tells a client nothing.
            raise BadImage(re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", failure_reason(exc))) from None

    def run(self, images: list[torch.Tensor]) -> list[Result]:
        """One forward pass over ``images``; features are cast to the model's stored dtype as predict does."""
        feats = {k: v.astype(self.dtype, copy=False) for k, v in self.featurizer(stack_images(images)).items()}
        scores = self._scores(feats)
        return [Result({k: v[i] for k, v in feats.items()}, None if scores is None else scores[i])
                for i in range(len(images))]

    def _scores(self, feats: dict[str, np.ndarray]) -> np.ndarray | None:
        return None if self.predictor is None else self.predictor.scores(feats)

    def warm_up(self, batch: int) -> None:
        """Run one batch of blank images, so that the first real request does not pay for oneDNN's setup."""
        self.run([torch.zeros(self.pre.channels, self.pre.crop, self.pre.crop, dtype=torch.uint8)] * batch)

    def describe(self) -> dict:
        """What GET /v1/model answers."""
        loaded = self.featurizer.loaded
        return {
            "kind": self.kind, "source": self.source, "model": loaded.arch.model, "weights": str(loaded.weights_id),
            "weights_sha256": loaded.weights_id.sha256,
            "layers": {layer: int(dim) for layer, dim in self.featurizer.dims.items()},
            "classes": self.classes, "preprocess": asdict(self.pre), "tta": self.featurizer.tta,
            "device": str(self.featurizer.device), "precision": self.featurizer.precision,
        }


def load_served_model(config: ServeConfig) -> ServedModel:
    """Build what ``config`` names, with the same provenance checks as ``alexfeat predict``."""
    path = config.model_path
    if path is None:
        fz = build_featurizer(config.model, config.weights or "imagenet", config.layers, config.pool,
                              resolve_device(config.device), overrides=config.overrides, tta=config.tta or "none",
                              precision=config.precision)
        return ServedModel(fz, f"{config.model} ({fz.loaded.weights_id})", max_pixels=config.max_pixels)
    from alexfeat.classifiers.predictor import load_predictor  # scikit-learn, only for a model

    predictor = load_predictor(path, weights=Path(config.weights) if config.weights else None, device=config.device,
                               tta=config.tta, precision=config.precision, **config.overrides)
    return ServedModel(predictor.featurizer(), str(path), predictor, config.max_pixels)
