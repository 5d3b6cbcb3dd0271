"""The short public API: ``featurize``, ``fit``, ``load_model``, ``evaluate`` and ``predict`` over the stages.

The stages word their errors for the command line (``pass --overwrite``); a call through this module gets
the same error in its own words (``pass overwrite=True``), from one rule: ``_in_python_terms``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

from alexfeat.choices import COMPRESSIONS, DECODES, DEVICES, DTYPES, ENGINES, POOLS, PRECISIONS, RESIZE_MODES, TTAS
from alexfeat.classifiers.fit import FitConfig, FitResult, fit_classifier
from alexfeat.classifiers.model_file import ClassifierModel
from alexfeat.classifiers.predictor import load_predictor
from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.sources import SourceOptions
from alexfeat.featurizer.sources.folders import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from alexfeat.classifiers.evaluate import Report
    from alexfeat.classifiers.predict import Predictions
    from alexfeat.featurizer.run import FeaturizeResult

__all__ = ["featurize", "fit", "load_model", "evaluate", "predict"]

F = TypeVar("F", bound=Callable)

# Flags whose Python parameter has another name, and values that a flag's name may be followed by.
_RENAMED = {"classes": "classes_file"}
_LITERALS = frozenset({"imagenet", *POOLS, *DTYPES, *DEVICES, *DECODES, *ENGINES, *COMPRESSIONS, *RESIZE_MODES,
                       *TTAS, *PRECISIONS})
# A command line quoted whole ("alexfeat layers --model X --all lists them") keeps its flags.
_FLAG = re.compile(r"(alexfeat [a-z][a-z-]*\b[^;()]*)"
                   r"|--([a-z][a-z0-9-]*)(?: ([A-Z][A-Z/_]*\b|\d[\d.]*\b|[a-z0-9]+\b))?")


def _in_python_terms(message: str, switches: frozenset[str]) -> str:
    """A command-line message in a Python caller's words: ``--overwrite`` -> ``overwrite=True`` (a switch),
    ``--weights PATH`` -> ``weights=PATH``, ``--engine ray`` -> ``engine="ray"``, ``--val-split must`` ->
    ``val_split must``."""
    def parameter(match: re.Match) -> str:
        if match.group(1):
            return match.group(1)
        name = match.group(2).replace("-", "_")
        name, value = _RENAMED.get(name, name), match.group(3)
        if name in switches:
            return f"{name}=True" + (f" {value}" if value else "")
        if value is None:
            return name
        if value in _LITERALS:
            return f'{name}="{value}"'
        if value[0].isupper() or value[0].isdigit():
            return f"{name}={value}"
        return f"{name} {value}"

    return _FLAG.sub(parameter, message)


def _speaks_python(configs: Callable[[], tuple[type, ...]]) -> Callable[[F], F]:
    """Re-raise the stages' AlexfeatError in the words of the function's parameters (``_in_python_terms``);
    ``configs()``: the dataclasses whose fields are its settings (called on an error only: they may need torch)."""
    def decorate(function: F) -> F:
        @functools.wraps(function)
        def call(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except AlexfeatError as exc:
                switches = frozenset(f.name for config in configs() for f in fields(config)
                                     if isinstance(f.default, bool))
                raise AlexfeatError(_in_python_terms(str(exc), switches)) from None
        return call  # type: ignore[return-value]
    return decorate


def _featurize_configs() -> tuple[type, ...]:
    from alexfeat.featurizer.run import FeaturizeConfig  # torch

    return FeaturizeConfig, SourceOptions


@_speaks_python(_featurize_configs)
def featurize(images: str | Path | Sequence[str | Path], out: str | Path, **settings) -> FeaturizeResult:
    """Featurize ``images`` (a folder, list, Parquet or tar files: docs/sources.md) into the store ``out``.

    ``settings`` are ``FeaturizeConfig`` fields (model, weights, layers, pool, dtype, batch_size, device,
    overwrite, resume, ...) and ``SourceOptions`` fields (classes_file, label_column, image_column, limit,
    per_class, ...); ``mean`` and ``std`` are tuples of numbers.
    """
    from alexfeat.featurizer.featurize import featurize as featurize_config  # torch
    from alexfeat.featurizer.run import FeaturizeConfig

    source_names = {f.name for f in fields(SourceOptions)}
    source = SourceOptions(**{k: settings.pop(k) for k in list(settings) if k in source_names})
    if not isinstance(images, (str, Path)):
        images = tuple(images)
    return featurize_config(FeaturizeConfig(images=images, out=Path(out), quiet=settings.pop("quiet", True),
                                            source=source, **settings))


@_speaks_python(lambda: (FitConfig,))
def fit(kind: str, store: str | Path, out: str | Path | None = None, **settings) -> FitResult:
    """Fit a classifier (``kind``: svm, logreg or mlp) on a store and save it to ``out``;
    ``settings`` are ``FitConfig`` fields (layer, scale, search, val_split, C, ...)."""
    return fit_classifier(FitConfig(kind=kind, store=Path(store), out=None if out is None else Path(out), **settings))


def load_model(path: str | Path) -> ClassifierModel:
    """A saved classifier (runs pickle code from the file: load only files you trust)."""
    return ClassifierModel.load(Path(path))


@_speaks_python(tuple)
def evaluate(model: str | Path, data: str | Path, *, device: str = "auto", tta: str | None = None,
             resize: int | None = None, crop: int | None = None, batch_size: int = 64,
             workers: int | None = None, precision: str | None = None) -> Report:
    """Score ``model`` (a fit-* model or a trainer checkpoint) on labelled ``data``: a feature store, or for a
    checkpoint an image folder or labelled list. ``tta``, ``resize``, ``crop`` and ``precision`` (None: the
    default, docs/precision.md) apply to checkpoints."""
    predictor = load_predictor(Path(model), device=device, tta=tta, resize=resize, crop=crop, precision=precision)
    return predictor.evaluate(Path(data), batch_size=batch_size, workers=workers)


@_speaks_python(tuple)
def predict(model: str | Path, inputs: str | Path | Sequence[str | Path], *, weights: str | Path | None = None,
            device: str = "auto", tta: str | None = None, resize: int | None = None, crop: int | None = None,
            batch_size: int = 64, workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
            precision: str | None = None) -> Predictions:
    """Class probabilities of ``model`` for a feature store or for images (folders, lists, image files, Parquet
    or tar files). ``weights``: the file a fit-* model's features came from, when they came from a file;
    ``tta`` and ``precision`` (None: the model's own, docs/probe.md and docs/precision.md) apply to images."""
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    predictor = load_predictor(Path(model), weights=None if weights is None else Path(weights), device=device,
                               tta=tta, resize=resize, crop=crop, precision=precision)
    return predictor.predict(paths, batch_size, workers, True, max_pixels)
