"""The server's settings and what the HTTP side and the model side hand each other (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alexfeat.featurizer.sources.folders import DEFAULT_MAX_PIXELS

__all__ = ["ServeConfig", "BadImage", "Result"]


@dataclass(frozen=True)
class ServeConfig:
    """What to serve and under which limits.

    ``model_path`` is a ``.joblib`` classifier or a trainer checkpoint; ``None`` serves bare
    features of ``model`` (with ``weights``: imagenet, none or a file) at ``layers``.
    """

    model_path: Path | None = None
    weights: str | None = None
    model: str = "alexnet"
    layers: tuple[str, ...] = ()
    pool: str = "none"
    overrides: dict = field(default_factory=dict)  # resize / crop / mean / std (a checkpoint: resize / crop)
    # Test-time augmentation (alexfeat.choices.TTAS) of a checkpoint or of bare features; None: none, and a
    # .joblib model's features are made as its training store's were (its --tta included) whatever this says.
    tta: str | None = None
    device: str = "auto"
    precision: str | None = None  # what the network computes in (alexfeat.choices.PRECISIONS)
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    timeout_s: float = 30.0
    max_body_mb: float = 20.0
    decode_threads: int = 2
    max_pixels: int = DEFAULT_MAX_PIXELS  # as featurize and predict
    api_key: str | None = None

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


class BadImage(ValueError):
    """The request's bytes are not a decodable image (or one over the pixel limit); str() is the reason."""


@dataclass
class Result:
    """One image's answer: its features per layer and, for a classifier, its class probabilities."""

    features: dict[str, np.ndarray]
    scores: np.ndarray | None = None
