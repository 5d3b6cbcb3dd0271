"""Predict classes and probabilities with a fitted model, on a store or straight on images."""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from alexfeat.classifiers.model_file import ClassifierModel
from alexfeat.classifiers.streaming import predict_store
from alexfeat.atomic import atomic_output
from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.arch import Arch
from alexfeat.featurizer.sources import open_source
from alexfeat.featurizer.sources.folders import DEFAULT_MAX_PIXELS
from alexfeat.store.reader import FeatureStore
from alexfeat.store.weights_id import WeightsId

if TYPE_CHECKING:
    from alexfeat.featurizer.featurizer import Featurizer

# The image path (decode, network, torch: ~2 s and ~640 MB) is imported inside the functions that use it,
# so that predicting on a feature store never loads torch.

__all__ = ["Predictions", "predict", "featurizer_for_model", "check_weights_given", "is_store_input",
           "PRECISION_DIFFERENCE"]

# bench/precision_accuracy.py: fit-logreg on EfficientNet-Lite0 features of ../shared's photos (docs/precision.md).
PRECISION_DIFFERENCE = ("an fp32 logreg on bf16 EfficientNet-Lite0 features changed 0.12% of its classes, "
                        "its test accuracy by +0.12 points")


@dataclass
class Predictions:
    """Per-row class probabilities; ``skipped`` lists (path, reason) for unreadable images;
    ``positions``: each input's place in the input order, the predicted ones' then the skipped ones'
    (None: predicted in input order, skipped after)."""

    paths: list[str]
    classes: list[str]
    probabilities: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    positions: list[int] | None = None

    @classmethod
    def of_images(cls, paths: list[str], classes: list[str], indices: list[int], probabilities: np.ndarray,
                  failures: list[tuple[int, str]]) -> "Predictions":
        """From ``extract_features`` on the images ``paths``: ``probabilities`` for those at ``indices``,
        ``failures`` (index, reason) for the others."""
        return cls([paths[i] for i in indices], classes, probabilities, [(paths[i], why) for i, why in failures],
                   [*indices, *(i for i, _ in failures)])

    @property
    def predicted(self) -> list[str]:
        return [self.classes[i] for i in self.probabilities.argmax(axis=1)]

    def rows(self) -> list[tuple[str, str, np.ndarray | None, str]]:
        """(path, prediction, probabilities, error) for every input, in input order; a skipped input has an
        empty prediction, no probabilities and the reason as its error."""
        rows = [(p, pred, probs, "") for p, pred, probs in zip(self.paths, self.predicted, self.probabilities)]
        rows += [(p, "", None, reason) for p, reason in self.skipped]
        if self.positions is None:
            return rows
        return [row for _, row in sorted(zip(self.positions, rows), key=lambda pair: pair[0])]

    def write_csv(self, path: Path) -> None:
        """``path,prediction,prob_<class>...,error``, written atomically: a row for every input, in input
        order (``rows``)."""
        with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "prediction", *[f"prob_{c}" for c in self.classes], "error"])
            for p, pred, probs, error in self.rows():
                writer.writerow([p, pred, *([f"{x:.6f}" for x in probs] if probs is not None
                                            else [""] * len(self.classes)), error])

    def summary(self) -> str:
        """How many inputs were predicted and how many skipped."""
        return f"{len(self.paths)} predicted" + (f", {len(self.skipped)} skipped" if self.skipped else "")


def predict(model_path: Path, inputs: list[Path], weights: Path | None = None, device: str = "auto",
            batch_size: int = 64, workers: int | None = None, quiet: bool = True,
            max_pixels: int = DEFAULT_MAX_PIXELS, tta: str | None = None, precision: str | None = None) -> Predictions:
    """Predict for a feature store (one ``.h5`` input or a folder of parts) or for images (folder, list or
    Parquet file, tar shards, or image files). Images are featurized as the model's training store was;
    ``tta``, if given, must be that store's (see ``featurizer_for_model``)."""
    model = ClassifierModel.load(model_path)
    if is_store_input(inputs):
        given = [name for name, value in (("--weights", weights), ("--tta", tta), ("--precision", precision))
                 if value is not None]
        if given:
            raise AlexfeatError(f"{given[0]} does not apply to a feature store, whose features are already computed")
        with FeatureStore.open(inputs[0]) as store:
            model.check_store(store)
            return Predictions(store.paths, model.classes, predict_store(model, store, "predict_proba"))
    from alexfeat.featurizer.drivers.memory import extract_features

    images = open_source(inputs)
    fz = featurizer_for_model(model, weights, device, tta, precision)
    dtype = model.features.dtype
    indices, feats, failures = extract_features(fz, images, dtype, batch_size, workers, quiet, max_pixels)
    probs = model.predict_proba(model.matrix(feats))
    return Predictions.of_images(images.paths, model.classes, indices, probs, failures)


def is_store_input(inputs: list[Path]) -> bool:
    """One feature store: an ``.h5`` file or a folder of part stores."""
    if len(inputs) != 1:
        return False
    path = Path(inputs[0])
    return path.suffix.lower() in (".h5", ".hdf5") or (path.is_dir() and any(path.glob("part-*.h5")))


def check_weights_given(model: ClassifierModel, weights: Path | None) -> None:
    """AlexfeatError when the model's features came from a weights file and ``weights`` names none: its
    network cannot be rebuilt (no torch needed to say so)."""
    weights_id = WeightsId.parse(model.features.weights)
    if weights is None and weights_id.kind == "file":
        raise AlexfeatError(f"this model's features came from the weights file {weights_id.name}; "
                            f"pass --weights PATH to that file (or a copy of it) to predict on images")


def featurizer_for_model(model: ClassifierModel, weights: Path | None, device: str,
                         tta: str | None = None, precision: str | None = None) -> Featurizer:
    """Rebuild the exact featurizer a model's training store was made with, or refuse.

    ``tta``: what the user asked for (None: nothing); refused unless it is the training store's, as any
    other way of computing the features than the model was fitted on would be. ``precision``: the network runs
    in the precision of the model's features unless it says otherwise, with a warning when that differs from
    them (docs/precision.md).
    """
    from alexfeat.featurizer.decode import Preprocess
    from alexfeat.featurizer.device import resolve_device
    from alexfeat.featurizer.models import load_model
    from alexfeat.featurizer.featurizer import Featurizer

    features = model.features
    if tta is not None and tta != features.tta:
        raise AlexfeatError(f"this model was fitted on features made with --tta {features.tta}, and images are "
                            f"featurized the same way: --tta {tta} would give it other features; leave --tta out")
    weights_id = WeightsId.parse(features.weights)
    arch = Arch.from_dict(features.arch)
    check_weights_given(model, weights)
    if weights is not None:
        loaded = load_model(arch, str(weights))
    elif weights_id.kind == "none":
        loaded = load_model(arch, "none", seed=weights_id.seed)
    else:
        loaded = load_model(arch, "imagenet")
    if loaded.weights_id != weights_id:
        raise AlexfeatError(f"these weights ({loaded.weights_id}) are not the ones the model's features came from "
                            f"({weights_id}); predictions would be meaningless")
    pre = Preprocess.from_dict(features.preprocess)
    # The training store's test-time augmentation too: flip-averaged features need flip-averaged inputs.
    fz = Featurizer(loaded, model.layers, pre, features.options["pool"], resolve_device(device), tta=features.tta,
                    precision=features.precision if precision is None else precision)
    if fz.precision != features.precision:
        warnings.warn(f"this model was fitted on {features.precision} features and these images run in "
                      f"{fz.precision}: expect small differences (measured: {PRECISION_DIFFERENCE}); "
                      f"--precision {features.precision} matches the model")
    return fz
