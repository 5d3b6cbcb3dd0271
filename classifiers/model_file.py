"""The classifier model file: one joblib file holding a scikit-learn Pipeline and its metadata.

joblib (pickle) files run code when they are loaded: load only files you trust.
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.pipeline import Pipeline

from alexfeat.atomic import atomic_output
from alexfeat.errors import AlexfeatError
from alexfeat.paths import existing_file
from alexfeat.output import make_parents
from alexfeat.store.reader import FeatureStore
from alexfeat.store.provenance import Provenance

__all__ = ["ClassifierModel", "describe_model"]

MODEL_FORMAT = "alexfeat-classifier-v1"


@dataclass
class ClassifierModel:
    """A fitted Pipeline (scaler + classifier) and what it was trained on.

    ``meta`` holds: kind, classes, layer, dim, featurizer (the store's provenance
    attributes), n_train, params, cv (search results), val (held-out scores),
    versions, created, fit_seconds; a model of several layers side by side also
    ``layers`` and ``dims`` (its ``layer`` is then their names joined by "+").
    """

    pipeline: Pipeline
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def layer(self) -> str:
        """The layer's name, or the layers' names joined by "+"."""
        return self.meta["layer"]

    @property
    def layers(self) -> tuple[str, ...]:
        """The layers whose features it takes, side by side in this order."""
        return tuple(self.meta.get("layers") or (self.meta["layer"],))

    def matrix(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """The model's input [n, dim] from {layer: [n, D]} features (its layers side by side, as float32)."""
        blocks = [np.asarray(features[layer], dtype=np.float32) for layer in self.layers]
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)

    @property
    def features(self) -> Provenance:
        """How the training store's features were made (what the model file records of its provenance)."""
        return Provenance.from_attrs(self.meta["featurizer"])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class indices into ``classes`` for features X [n, dim]."""
        return self._checked(self.pipeline.predict, X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probabilities [n, len(classes)] for features X [n, dim]."""
        if len(X) == 0:
            return np.empty((0, len(self.classes)))
        return self._checked(self.pipeline.predict_proba, X)

    @staticmethod
    def _checked(method, X: np.ndarray) -> np.ndarray:
        try:
            return method(X)
        except ValueError as exc:  # e.g. NaN or infinite features in the store
            raise AlexfeatError(f"the model cannot use these features: {exc}") from None

    def save(self, path: Path) -> None:
        """Write atomically: a temporary file in the same folder, then a rename."""
        path = Path(path)
        make_parents(path)
        with atomic_output(path) as tmp:
            joblib.dump({"format": MODEL_FORMAT, "pipeline": self.pipeline, "meta": self.meta}, tmp)

    @classmethod
    def load(cls, path: Path) -> "ClassifierModel":
        """Load a model file the user pointed at (this runs pickle code from the file)."""
        path = existing_file(path, "model file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # sklearn's own version warning; we give a clearer one
                data = joblib.load(path)
        except (EOFError, pickle.UnpicklingError, ValueError, KeyError, IndexError, TypeError, AttributeError,
                ImportError, OSError) as exc:
            raise AlexfeatError(f"{path} is not a readable alexfeat model file (truncated or corrupt?): "
                                f"{type(exc).__name__}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
            raise AlexfeatError(f"{path} is a joblib file but not an alexfeat classifier model")
        model = cls(data["pipeline"], data["meta"])
        trained_with = model.meta["versions"]["scikit-learn"]
        if trained_with != sklearn.__version__:
            warnings.warn(f"{path} was saved with scikit-learn {trained_with}, this is {sklearn.__version__}; "
                          f"predictions may differ", UserWarning, stacklevel=2)
        return model

    def check_store(self, store: FeatureStore) -> None:
        """Refuse a store whose features differ from the ones this model was trained on."""
        dims = self.meta.get("dims") or {self.layer: self.meta["dim"]}
        for layer in self.layers:
            if layer not in store.layers:
                raise AlexfeatError(f"{store.path} has no layer {layer!r} (it has {', '.join(store.layers)}); "
                                    f"this model was trained on {self.layer}")
            if store.dim(layer) != dims[layer]:
                raise AlexfeatError(f"{store.path} layer {layer} has dimension {store.dim(layer)}, "
                                    f"the model expects {dims[layer]}")
        differences = store.provenance.differences(self.meta["featurizer"])
        if differences:
            raise AlexfeatError(f"{store.path} was featurized with other settings than this model's features: "
                                f"{'; '.join(differences)};\nfeaturize the images with the model's settings "
                                f"(alexfeat info MODEL shows them)")


def describe_model(path: Path) -> list[str]:
    """``alexfeat info MODEL``: what the model is, what it was trained on, and how."""
    model = ClassifierModel.load(path)
    meta, features = model.meta, model.features
    lines = [f"classifier {path}: {meta['kind']} on {meta['layer']} ({meta['dim']} dims, scale {meta['scale']})",
             f"  classes: {', '.join(meta['classes'])}",
             f"  trained on {meta['n_train']} rows of {meta['store']} in {meta['fit_seconds']} s",
             f"  featurizer: model {features.model}, weights {features.weights}"
             + (f", test-time augmentation {features.tta}" if features.tta != "none" else ""),
             f"  preprocess: {json.dumps(features.preprocess)}",
             f"  params: {json.dumps(meta['params'])}"]
    if meta.get("cv"):
        lines.append(f"  search: best {meta['cv']['best_params']} with cv accuracy {meta['cv']['best_score']:.4f} "
                     f"({meta['cv']['folds']} folds)")
    if meta.get("streaming"):
        st = meta["streaming"]
        lines.append(f"  streaming fit ({st['reason']}): {meta['best_epochs']} epochs, held-out accuracy "
                     f"{st['holdout_accuracy']:.4f} on {st['holdout_rows']} rows" + (f", PCA to {st['pca']}"
                                                                                       if st["pca"] else ""))
    if meta.get("val"):
        lines.append(f"  validation accuracy {meta['val']['accuracy']:.4f} on {meta['val']['n']} rows")
    lines.append(f"  versions: {json.dumps(meta['versions'])}; created {meta['created']}")
    return lines
