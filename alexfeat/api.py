"""The short public API: ``featurize``, ``fit`` and ``load_model`` over the stages' configs."""

from __future__ import annotations

from pathlib import Path

from alexfeat.classifiers.fit import FitConfig, FitResult, fit_classifier
from alexfeat.classifiers.model_file import ClassifierModel
from alexfeat.featurizer.run import FeaturizeConfig, FeaturizeResult
from alexfeat.featurizer.featurize import featurize as _featurize

__all__ = ["featurize", "fit", "load_model"]


def featurize(images: str | Path, out: str | Path, **settings) -> FeaturizeResult:
    """Featurize ``images`` into the store ``out``; ``settings`` are ``FeaturizeConfig`` fields
    (model, weights, layers, pool, dtype, batch_size, device, overwrite, resume, ...)."""
    return _featurize(FeaturizeConfig(images=Path(images), out=Path(out), quiet=settings.pop("quiet", True),
                                      **settings))


def fit(kind: str, store: str | Path, out: str | Path | None = None, **settings) -> FitResult:
    """Fit a classifier (``kind``: svm, logreg or mlp) on a store and save it to ``out``;
    ``settings`` are ``FitConfig`` fields (layer, scale, search, val_split, C, ...)."""
    return fit_classifier(FitConfig(kind=kind, store=Path(store), out=None if out is None else Path(out), **settings))


def load_model(path: str | Path) -> ClassifierModel:
    """A saved classifier (runs pickle code from the file: load only files you trust)."""
    return ClassifierModel.load(Path(path))
