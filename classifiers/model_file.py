"""The classifier model file: one joblib file holding a scikit-learn Pipeline and its metadata.

joblib (pickle) files run code when they are loaded: load only files you trust.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn
from sklearn.pipeline import Pipeline

from alexfeat.featurizer.atomic import atomic_output
from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.model_files import existing_file
from alexfeat.featurizer.output import make_parents
from alexfeat.featurizer.store import FeatureStore
from alexfeat.featurizer.weights_id import WeightsId

__all__ = ["ClassifierModel", "PROVENANCE_KEYS"]

MODEL_FORMAT = "alexfeat-classifier-v1"
# Store attributes that must match between the training store and any store a model is used on.
PROVENANCE_KEYS = ("model", "weights", "preprocess", "options")


@dataclass
class ClassifierModel:
    """A fitted Pipeline (scaler + classifier) and what it was trained on.

    ``meta`` holds: kind, classes, layer, dim, featurizer (the store's provenance
    attributes), n_train, params, cv (search results), val (held-out scores),
    versions, created, fit_seconds.
    """

    pipeline: Pipeline
    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def layer(self) -> str:
        return self.meta["layer"]

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
        if self.layer not in store.layers:
            raise AlexfeatError(f"{store.path} has no layer {self.layer!r} (it has {', '.join(store.layers)}); "
                                f"this model was trained on {self.layer}")
        if store.dim(self.layer) != self.meta["dim"]:
            raise AlexfeatError(f"{store.path} layer {self.layer} has dimension {store.dim(self.layer)}, "
                                f"the model expects {self.meta['dim']}")
        attrs = store.attrs
        differences = [d for key in PROVENANCE_KEYS for d in _differences(key, self.meta["featurizer"].get(key),
                                                                          attrs.get(key))]
        if differences:
            raise AlexfeatError(f"{store.path} was featurized with other settings than this model's features: "
                                f"{'; '.join(differences)};\nfeaturize the images with the model's settings "
                                f"(alexfeat info MODEL shows them)")


def _differences(key: str, want: Any, got: Any) -> list[str]:
    """``key=GOT (the model expects WANT)`` for each differing entry, nested dicts compared key by key."""
    if isinstance(want, dict) and isinstance(got, dict):
        return [d for k in sorted(set(want) | set(got)) for d in _differences(f"{key}.{k}", want.get(k), got.get(k))]
    if key == "weights" and isinstance(want, str) and isinstance(got, str) \
            and WeightsId.parse(want) == WeightsId.parse(got):  # a renamed copy is the same weights
        return []
    return [] if want == got else [f"{key}={got!r} (the model expects {want!r})"]
