"""alexfeat: CNN features in HDF5, classical classifiers on them, and network training.

The public Python API (the command line is a thin shell over the same functions)::

    import alexfeat

    alexfeat.featurize("photos/", "feats.h5", layers=("fc7",))      # -> FeaturizeResult
    with alexfeat.FeatureStore.open("feats.h5") as store:
        X, y = store.features("fc7"), store.labels
    alexfeat.fit("logreg", "feats.h5", out="clf.joblib")             # -> FitResult
    model = alexfeat.load_model("clf.joblib")                        # -> ClassifierModel
    model.predict_proba(X)
    alexfeat.evaluate("clf.joblib", "test.h5").accuracy              # -> Report
    alexfeat.predict("clf.joblib", "new_photos/").predicted          # -> Predictions

Names are imported on first use, so ``import alexfeat`` stays light (no torch, no scikit-learn).
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("alexfeat")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "AlexfeatError", "FeatureStore", "ClassifierModel", "featurize", "fit", "load_model",
           "evaluate", "predict"]

_LAZY = {
    "AlexfeatError": "alexfeat.errors",
    "FeatureStore": "alexfeat.store.reader",
    "ClassifierModel": "alexfeat.classifiers.model_file",
    "featurize": "alexfeat.api",
    "fit": "alexfeat.api",
    "load_model": "alexfeat.api",
    "evaluate": "alexfeat.api",
    "predict": "alexfeat.api",
}

if TYPE_CHECKING:
    from alexfeat.api import evaluate, featurize, fit, load_model, predict
    from alexfeat.classifiers.model_file import ClassifierModel
    from alexfeat.errors import AlexfeatError
    from alexfeat.store.reader import FeatureStore


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'alexfeat' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (and the lazily imported ones), not this module's own helpers."""
    return sorted(__all__)
