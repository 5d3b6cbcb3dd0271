"""Use a trainer checkpoint as a classifier: class probabilities for images, scores on a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from alexfeat.classifiers.evaluate import Report, map_labels, score_predictions
from alexfeat.classifiers.predict import Predictions, is_store_input
from alexfeat.choices import TTAS, check_choice
from alexfeat.errors import AlexfeatError
from alexfeat.paths import existing_file
from alexfeat.featurizer.device import resolve_device
from alexfeat.featurizer.drivers.memory import extract_features
from alexfeat.featurizer.featurizer import Featurizer, apply_overrides
from alexfeat.featurizer.sources import SampleList
from alexfeat.featurizer.sources import open_source
from alexfeat.featurizer.sources.folders import DEFAULT_MAX_PIXELS
from alexfeat.featurizer.arch import Arch
from alexfeat.featurizer.models import load_model

__all__ = ["CheckpointPredictor", "predict_with_checkpoint", "evaluate_checkpoint", "checkpoint_featurizer"]


def checkpoint_featurizer(checkpoint: Path, device: str, tta: str = "none", resize: int | None = None,
                          crop: int | None = None, precision: str | None = None) -> Featurizer:
    """A trainer checkpoint cut at its logits (what predict, evaluate and the server run).

    ``resize``/``crop`` replace the input size the checkpoint was trained at (a crop alone keeps
    its resize/crop ratio): networks trained on random crops often score higher on larger test
    crops than on their training size; choose the size on a validation split.
    """
    check_choice("--tta", tta, TTAS)
    existing_file(checkpoint, "checkpoint")
    loaded = load_model(Arch(), str(checkpoint))
    if not loaded.classes:
        raise AlexfeatError(f"{checkpoint} is a plain state dict without class names; predict and evaluate need "
                            f"a checkpoint written by alexfeat train-scratch or finetune")
    if resize is not None and loaded.preprocess.mode == "pad":
        raise AlexfeatError(f"--resize does not apply to {checkpoint}, trained with --resize-mode pad (the longer "
                            f"side is resized to --crop): leave it out")
    pre = apply_overrides(loaded.preprocess, resize=resize, crop=crop)
    # flip: the logits of each image averaged with those of its mirror image
    return Featurizer(loaded, ("logits",), pre, "none", resolve_device(device), tta=tta, precision=precision)


def _described(checkpoint: Path, network: Featurizer) -> str:
    """The checkpoint and how it was run, for a report: test-time augmentation and a changed input size."""
    notes = ["flip TTA"] if network.tta == "flip" else []
    pre, trained = network.pre, network.loaded.preprocess
    if pre.mode == "pad" and pre.crop != trained.crop:
        notes.append(f"input {pre.crop}, trained at {trained.crop}")
    elif pre.mode != "pad" and (pre.resize, pre.crop) != (trained.resize, trained.crop):
        notes.append(f"crop {pre.crop} of {pre.resize}, trained at {trained.crop} of {trained.resize}")
    return str(checkpoint) + (f" ({', '.join(notes)})" if notes else "")


def predict_with_checkpoint(checkpoint: Path, inputs: list[Path], device: str = "auto", batch_size: int = 64,
                            workers: int | None = None, quiet: bool = True,
                            max_pixels: int = DEFAULT_MAX_PIXELS, tta: str = "none", resize: int | None = None,
                            crop: int | None = None, precision: str | None = None) -> Predictions:
    _refuse_store(checkpoint, inputs)
    network = checkpoint_featurizer(checkpoint, device, tta, resize, crop, precision)
    return _predict(network, open_source(inputs), batch_size, workers, quiet, max_pixels)


def _predict(network: Featurizer, images: SampleList, batch_size: int, workers: int | None, quiet: bool,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> Predictions:
    indices, feats, failures = extract_features(network, images, "float32", batch_size, workers, quiet, max_pixels)
    probs = torch.softmax(torch.from_numpy(feats["logits"]), dim=1).numpy()
    return Predictions.of_images(images.paths, list(network.loaded.classes), indices, probs, failures)


def _refuse_store(checkpoint: Path, inputs: list[Path]) -> None:
    if is_store_input(inputs):
        raise AlexfeatError(f"{checkpoint} is a network checkpoint: it runs on images, not on the feature store "
                            f"{inputs[0]}; pass the images, or a model from fit-* to use the store")


def evaluate_checkpoint(checkpoint: Path, folder: Path, device: str = "auto", batch_size: int = 64,
                        workers: int | None = None, tta: str = "none", resize: int | None = None,
                        crop: int | None = None, precision: str | None = None) -> Report:
    _refuse_store(checkpoint, [folder])
    # Then: a plain state dict is the mistake to report.
    network = checkpoint_featurizer(checkpoint, device, tta, resize, crop, precision)
    images = open_source([folder])
    if not images.labeled:
        raise AlexfeatError(f"{folder} has no labels (class sub-folders, or a list file's label column), so there "
                            f"is nothing to score against")
    result = _predict(network, images, batch_size, workers, quiet=True)
    if not result.paths:
        raise AlexfeatError(f"none of the images in {folder} could be decoded")
    by_path = dict(zip(images.paths, images.labels))
    y_true = map_labels(np.array([by_path[p] for p in result.paths]), list(images.classes), result.classes,
                        str(folder))
    report = score_predictions(y_true, result.probabilities.argmax(axis=1), result.classes)
    report.model, report.data, report.skipped = _described(checkpoint, network), str(folder), result.skipped
    return report


class CheckpointPredictor:
    """A trainer checkpoint behind ``classifiers.predictor.Predictor``: softmax of its logits; the network
    is built on first use, so that the checks on the inputs come first."""

    kind = "checkpoint"
    dtype = "float32"

    def __init__(self, path: Path, device: str = "auto", tta: str = "none", resize: int | None = None,
                 crop: int | None = None, precision: str | None = None):
        self.path, self.device, self.tta, self.resize, self.crop = Path(path), device, tta, resize, crop
        self.precision = precision
        self._network: Featurizer | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.featurizer().loaded.classes)

    def featurizer(self) -> Featurizer:
        if self._network is None:
            self._network = checkpoint_featurizer(self.path, self.device, self.tta, self.resize, self.crop,
                                                  self.precision)
        return self._network

    def predict(self, inputs: list[Path], batch_size: int = 64, workers: int | None = None, quiet: bool = True,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Predictions:
        return predict_with_checkpoint(self.path, inputs, self.device, batch_size, workers, quiet, max_pixels,
                                       self.tta, self.resize, self.crop, self.precision)

    def evaluate(self, data: Path, batch_size: int = 64, workers: int | None = None) -> Report:
        return evaluate_checkpoint(self.path, data, self.device, batch_size, workers, self.tta, self.resize,
                                   self.crop, self.precision)

    def scores(self, features: dict[str, np.ndarray]) -> np.ndarray:
        return torch.softmax(torch.from_numpy(features["logits"]), dim=1).numpy()
