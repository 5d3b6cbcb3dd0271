"""One way to load what predicts: a classifier model from fit-* or a trainer checkpoint.

``load_predictor(path)`` is what evaluate, predict and the server use, so the "which kind of file
is it" rule (``alexfeat.paths.model_kind``) is applied in one place. Both kinds answer the same
calls; a checkpoint's network is built on first use (torch loads only then).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from alexfeat.classifiers.evaluate import Report, evaluate_store
from alexfeat.classifiers.model_file import ClassifierModel
from alexfeat.classifiers.predict import Predictions, featurizer_for_model, is_store_input, predict
from alexfeat.featurizer.sources.folders import DEFAULT_MAX_PIXELS
from alexfeat.errors import AlexfeatError
from alexfeat.paths import model_kind

if TYPE_CHECKING:
    from alexfeat.featurizer.featurizer import Featurizer

__all__ = ["Predictor", "ClassifierPredictor", "load_predictor"]


class Predictor(Protocol):
    """What evaluate, predict and serve call, whatever the file."""

    kind: str  # "classifier" or "checkpoint"
    path: Path
    classes: list[str]
    dtype: str  # the feature type its scores take (what the server casts features to)

    def predict(self, inputs: list[Path], batch_size: int = 64, workers: int | None = None, quiet: bool = True,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Predictions: ...

    def evaluate(self, data: Path, batch_size: int = 64, workers: int | None = None) -> Report: ...

    def featurizer(self) -> "Featurizer": ...

    def scores(self, features: dict[str, np.ndarray]) -> np.ndarray: ...


class ClassifierPredictor:
    """A fit-* model: on a store it reads the features, on images it rebuilds the store's featurizer."""

    kind = "classifier"

    def __init__(self, path: Path, weights: Path | None = None, device: str = "auto", tta: str | None = None,
                 precision: str | None = None):
        self.path, self.weights, self.device, self.tta = Path(path), weights, device, tta
        self.precision = precision

    @cached_property
    def model(self) -> ClassifierModel:
        return ClassifierModel.load(self.path)

    @property
    def classes(self) -> list[str]:
        return self.model.classes

    @property
    def dtype(self) -> str:
        """The stored feature type the model was fitted on (images are featurized to it)."""
        return self.model.features.dtype

    def predict(self, inputs: list[Path], batch_size: int = 64, workers: int | None = None, quiet: bool = True,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Predictions:
        return predict(self.path, inputs, self.weights, self.device, batch_size, workers, quiet, max_pixels, self.tta,
                       self.precision)

    def evaluate(self, data: Path, batch_size: int = 64, workers: int | None = None) -> Report:
        if data.is_dir() and not is_store_input([data]):
            raise AlexfeatError(f"{data} is a folder, and a .joblib model is evaluated on a labelled feature store: "
                                f"featurize it first (alexfeat featurize {data} test.h5), then evaluate on test.h5")
        return evaluate_store(self.path, data)

    def featurizer(self) -> "Featurizer":
        return featurizer_for_model(self.model, self.weights, self.device, self.tta, self.precision)

    def scores(self, features: dict[str, np.ndarray]) -> np.ndarray:
        return self.model.predict_proba(self.model.matrix(features))


def load_predictor(path: Path, *, weights: Path | None = None, device: str = "auto", tta: str | None = None,
                   resize: int | None = None, crop: int | None = None, precision: str | None = None) -> Predictor:
    """The classifier model or trainer checkpoint at ``path`` (AlexfeatError for anything else).

    ``weights``: for a classifier whose features came from a weights file; ``resize``, ``crop``: for a
    checkpoint (see ``checkpoint_model.checkpoint_featurizer``); ``tta``: a checkpoint's test-time
    augmentation (None: none), for a classifier a check (its features are made as its training store's were);
    ``precision``: what the network runs in on images (``--precision``; None: the default, or a classifier's
    features' own).
    """
    if model_kind(path) == "checkpoint":
        from alexfeat.classifiers.checkpoint_model import CheckpointPredictor  # torch

        return CheckpointPredictor(Path(path), device, tta or "none", resize, crop, precision)
    return ClassifierPredictor(Path(path), weights, device, tta, precision)
