"""Fit scikit-learn classifiers on a feature store: SVM, logistic regression, one-hidden-layer MLP."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC

from alexfeat.classifiers.choices import KERNELS, KINDS, SCALES
from alexfeat.classifiers.data import check_finite, choose_layers, labelled_rows, read_layers
from alexfeat.classifiers.mlp import EarlyStoppedMLP
from alexfeat.classifiers.model_file import ClassifierModel
from alexfeat import __version__
from alexfeat.choices import check_choice
from alexfeat.errors import AlexfeatError
from alexfeat.output import check_output
from alexfeat.split import stratified_split
from alexfeat.store.provenance import Provenance
from alexfeat.store.reader import FeatureStore

__all__ = ["FitConfig", "FitResult", "fit_classifier", "build_pipeline", "search_grid", "default_model_path"]


@dataclass(frozen=True)
class FitConfig:
    """Settings of one fit; ``None`` hyperparameters take each kind's default."""

    kind: str
    store: Path
    out: Path | None = None  # None: next to the store, named after kind and layer
    layer: str | None = None  # a layer, or several side by side: "a+b" (or "a,b"), each scaled on its own
    scale: str = "standard"  # standard | l2 | none
    search: bool = False
    val_split: float = 0.0
    seed: int = 0
    jobs: int | None = None
    C: float | None = None
    kernel: str = "linear"  # svm: linear | rbf
    gamma: str | float = "scale"  # svm rbf
    hidden: int = 256  # mlp
    alpha: float | None = None  # mlp L2 penalty
    max_epochs: int = 200  # mlp
    overwrite: bool = False
    streaming: bool = False  # fit over row chunks (also chosen when the features exceed memory_limit)
    memory_limit: int | None = None  # bytes; None: half the available memory
    pca: int | None = None  # streaming: IncrementalPCA to this many components first

    def __post_init__(self) -> None:
        check_choice("classifier kind", self.kind, KINDS)
        check_choice("--scale", self.scale, SCALES)
        check_choice("--kernel", self.kernel, KERNELS)


@dataclass
class FitResult:
    model: ClassifierModel
    path: Path
    seconds: float
    val: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"fitted {self.model.meta['kind']} on {self.model.meta['n_train']} rows of "
                 f"{self.model.layer} in {self.seconds:.1f} s"]
        cv = self.model.meta.get("cv")
        if cv:
            parts.append(f"cv accuracy {cv['best_score']:.4f} with {cv['best_params']}")
        if self.val:
            parts.append(f"validation accuracy {self.val['accuracy']:.4f} on {self.val['n']} rows")
        if "best_epochs" in self.model.meta:
            parts.append(f"{self.model.meta['best_epochs']} epochs (chosen by early stopping)")
        if "streaming" in self.model.meta:
            parts.insert(0, f"streamed over row chunks ({self.model.meta['streaming']['reason']})")
        return "; ".join(parts) + f"; saved {self.path}"


def default_model_path(store: Path, kind: str, layer: str) -> Path:
    return store.with_name(f"{store.stem}.{kind}-{layer}.joblib")


def build_pipeline(config: FitConfig, calibrated: bool = True, dims: dict[str, int] | None = None) -> Pipeline:
    """scaler + classifier for ``config``; SVMs are wrapped in Platt calibration unless ``calibrated=False``.

    ``dims``: {layer: width} of features of several layers side by side (in that order), each of which
    is then scaled on its own (``--scale l2``: each layer to unit length, not the whole row).
    """
    return Pipeline([("scale", _scaler(config.scale, dims)), ("clf", _classifier(config, calibrated))])


def _scaler(scale: str, dims: dict[str, int] | None):
    if scale == "none":
        return "passthrough"
    if dims is None or len(dims) == 1:
        return StandardScaler() if scale == "standard" else Normalizer(norm="l2")
    ends = np.cumsum([0, *dims.values()])
    return ColumnTransformer([(layer, _scaler(scale, None), slice(int(start), int(end)))
                              for layer, start, end in zip(dims, ends[:-1], ends[1:])])


def _classifier(config: FitConfig, calibrated: bool) -> BaseEstimator:
    if config.kind == "svm":
        C = 1.0 if config.C is None else config.C
        if config.kernel == "linear":
            svm = LinearSVC(C=C, max_iter=20000, random_state=config.seed)
        else:
            svm = SVC(kernel="rbf", C=C, gamma=config.gamma, random_state=config.seed)
        # SVM scores are not probabilities; sigmoid calibration on held-out folds makes them so.
        return CalibratedClassifierCV(svm, method="sigmoid", cv=3) if calibrated else svm
    if config.kind == "logreg":
        return LogisticRegression(C=1.0 if config.C is None else config.C, max_iter=5000, random_state=config.seed)
    # batch_size "auto" is min(200, n): one step per epoch on small stores; 64 gives several.
    return EarlyStoppedMLP(hidden=config.hidden, alpha=1e-4 if config.alpha is None else config.alpha,
                           batch_size=64, max_epochs=config.max_epochs, random_state=config.seed)


def search_grid(config: FitConfig) -> dict[str, list]:
    """The cross-validated grid for ``--search``, over the uncalibrated pipeline's parameters."""
    if config.kind == "svm" and config.kernel == "rbf":
        return {"clf__C": [0.1, 1.0, 10.0, 100.0], "clf__gamma": ["scale", 0.1, 0.01, 0.001]} \
            if config.scale == "l2" else {"clf__C": [0.1, 1.0, 10.0, 100.0], "clf__gamma": ["scale"]}
    if config.kind in ("svm", "logreg"):
        return {"clf__C": [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]}
    return {"clf__alpha": [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]}


def fit_classifier(config: FitConfig) -> FitResult:
    """Fit ``config.kind`` on a store and save it; returns the model and its scores."""
    if not 0.0 <= config.val_split < 1.0:
        raise AlexfeatError("--val-split must be in [0, 1)")
    with FeatureStore.open(config.store) as store:
        layers = choose_layers(store, config.layer)
        layer = "+".join(layers)
        dims = {name: store.dim(name) for name in layers}
        out = Path(config.out) if config.out else default_model_path(Path(config.store), config.kind, layer)
        check_output(out, overwrite=config.overwrite, inputs=(config.store,))
        labels = labelled_rows(store, "fit a classifier")
        train_rows, val_rows = stratified_split(labels, config.val_split, config.seed)
        reason = _streaming_reason(config, len(labels) * sum(dims.values()) * 4)
        if reason:
            if len(layers) > 1:
                raise AlexfeatError(f"{layer}: several layers side by side are fitted in memory, and a streaming "
                                    f"fit was asked for ({reason}); fit on one layer, or featurize fewer images")
            return _fit_streaming(config, store, layer, out, labels, train_rows, val_rows, reason)
        order = np.concatenate([train_rows, val_rows])
        X = read_layers(store, layers, order)  # train rows first, then validation rows: views, no copies
        check_finite(X, store.path, layer)
        X_train, X_val = X[: len(train_rows)], X[len(train_rows):]
        y_train, y_val = labels[train_rows], labels[val_rows]
        provenance = store.provenance
        classes = store.classes
        if len(np.unique(y_train)) < 2:
            raise AlexfeatError(f"{store.path} has fewer than two classes among its training rows")
        started = time.perf_counter()
        pipeline, cv = _fit(config, X_train, y_train, dims)
        seconds = time.perf_counter() - started
    val = {}
    if len(val_rows):
        pred = pipeline.predict(X_val)
        val = {"accuracy": float((pred == y_val).mean()), "n": int(len(val_rows))}
    meta = _metadata(config, layer, X.shape[1], classes, provenance, len(train_rows), pipeline, cv, val, seconds)
    if len(layers) > 1:
        meta.update(layers=list(layers), dims=dims)
    model = ClassifierModel(pipeline, meta)
    model.save(out)
    return FitResult(model, out, seconds, val)


def _streaming_reason(config: FitConfig, need: int) -> str | None:
    """Why this fit streams (None: it fits in memory)."""
    if config.streaming:
        return "--streaming"
    if config.pca:
        raise AlexfeatError("--pca is for streaming fits: add --streaming")
    from alexfeat.classifiers.streaming import memory_limit

    limit = memory_limit(config.memory_limit)
    if need > limit:
        return f"the features need {need / 1e9:.2f} GB, over the memory limit of {limit / 1e9:.2f} GB"
    return None


def _fit_streaming(config: FitConfig, store: FeatureStore, layer: str, out: Path, labels: np.ndarray,
                   train_rows: np.ndarray, val_rows: np.ndarray, reason: str) -> FitResult:
    from alexfeat.classifiers.streaming import fit_streaming, predict_store

    if len(np.unique(labels[train_rows])) < 2:
        raise AlexfeatError(f"{store.path} has fewer than two classes among its training rows")
    started = time.perf_counter()
    try:
        fitted = fit_streaming(config, store, layer, train_rows, labels)
    except ValueError as exc:  # scikit-learn's word on unusable input (NaN features, ...)
        raise AlexfeatError(f"cannot fit {config.kind} on {config.store}: {exc}") from None
    seconds = time.perf_counter() - started
    meta = _metadata(config, layer, store.dim(layer), store.classes, store.provenance, fitted.n_fit, fitted.pipeline,
                     None, {}, seconds)
    meta.update(params=fitted.params, best_epochs=fitted.best_epochs,
                streaming={"reason": reason, "holdout_rows": fitted.n_holdout,
                           "holdout_accuracy": fitted.holdout_accuracy, "pca": config.pca})
    model = ClassifierModel(fitted.pipeline, meta)
    if len(val_rows):
        pred = predict_store(model, store, rows=val_rows)
        meta["val"] = {"accuracy": float((pred == labels[val_rows]).mean()), "n": int(len(val_rows))}
    model.save(out)
    return FitResult(model, out, seconds, meta["val"])


def _fit(config: FitConfig, X: np.ndarray, y: np.ndarray,
         dims: dict[str, int] | None = None) -> tuple[Pipeline, dict[str, Any] | None]:
    smallest = int(np.bincount(y)[np.unique(y)].min())
    if config.kind == "svm" and smallest < 3:
        raise AlexfeatError(f"fit-svm needs at least 3 training rows of every class (its probabilities are "
                            f"calibrated on 3 folds); the smallest class has {smallest}")
    if config.kind == "mlp":
        _check_mlp_rows(y, min(5, smallest) if config.search else 1)
    try:
        return _fit_or_search(config, X, y, smallest, dims)
    except ValueError as exc:  # scikit-learn's word on unusable input (NaN features, too few rows, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AlexfeatError(f"cannot fit {config.kind} on {config.store}: {first}") from None


def _check_mlp_rows(y: np.ndarray, folds: int) -> None:
    """Early stopping holds out a stratified 10% (of each search fold's training rows): every class must
    have a row on both sides, which scikit-learn otherwise reports as a page of tracebacks."""
    classes = len(np.unique(y))

    def enough(n: int) -> bool:
        rows = n - (-(-n // folds) if folds > 1 else 0)  # the smallest training part of a fold
        held_out = -(-rows // 10)
        return held_out >= classes and rows - held_out >= classes

    if not enough(len(y)):
        need = next(n for n in range(len(y), 100 * classes * folds) if enough(n))
        where = f" in each of the {folds} search folds" if folds > 1 else ""
        raise AlexfeatError(f"fit-mlp needs at least {need} labelled rows here ({len(y)} given): early stopping holds "
                            f"out 10% of the training rows{where}, and that must include all {classes} classes;\n"
                            f"featurize more images, or use fit-logreg or fit-svm")


def _fit_or_search(config: FitConfig, X: np.ndarray, y: np.ndarray, smallest: int,
                   dims: dict[str, int] | None) -> tuple[Pipeline, dict[str, Any] | None]:
    if not config.search:
        return build_pipeline(config, dims=dims).fit(X, y), None
    folds = min(5, smallest)
    if folds < 2:
        raise AlexfeatError("--search needs at least two training rows of every class")
    grid = search_grid(config)
    # error_score="raise": a failing fit says why in one line, not one traceback per fold and setting
    search = GridSearchCV(build_pipeline(config, calibrated=False, dims=dims), grid, scoring="accuracy", refit=False,
                          error_score="raise", n_jobs=config.jobs,
                          cv=StratifiedKFold(folds, shuffle=True, random_state=config.seed))
    search.fit(X, y)
    best = search.best_params_
    final = build_pipeline(config, dims=dims)
    # Refit on every training row; an SVM's parameters sit under the calibration wrapper.
    prefix = "clf__estimator__" if isinstance(final.named_steps["clf"], CalibratedClassifierCV) else "clf__"
    final.set_params(**{prefix + k.removeprefix("clf__"): v for k, v in best.items()})
    final.fit(X, y)
    results = search.cv_results_
    table = [{"params": {k.removeprefix("clf__"): _plain(v) for k, v in p.items()},
              "mean": float(m), "std": float(s)}
             for p, m, s in zip(results["params"], results["mean_test_score"], results["std_test_score"])]
    cv = {"folds": folds, "best_params": {k.removeprefix("clf__"): _plain(v) for k, v in best.items()},
          "best_score": float(search.best_score_), "results": table}
    return final, cv


def _torch_version() -> str:
    # From the package metadata: importing torch (seconds, hundreds of MB) to read its version would
    # make every fit pay for a library it does not use.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "none"


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _metadata(config: FitConfig, layer: str, dim: int, classes: list[str], provenance: Provenance, n_train: int,
              pipeline: Pipeline, cv: dict | None, val: dict, seconds: float) -> dict[str, Any]:
    clf = pipeline.named_steps["clf"]
    inner = clf.estimator if isinstance(clf, CalibratedClassifierCV) else clf
    params = {k: list(v) if isinstance(v, tuple) else _plain(v) for k, v in inner.get_params().items()
              if isinstance(v, (int, float, str, tuple, type(None), np.generic))}
    extra = {"best_epochs": inner.best_epochs_} if isinstance(inner, EarlyStoppedMLP) else {}
    return {
        **extra,
        "kind": config.kind,
        "classes": list(classes),
        "layer": layer,
        "dim": int(dim),
        "scale": config.scale,
        "featurizer": provenance.feature_settings(),
        "store": str(Path(config.store).resolve()),
        "n_train": int(n_train),
        "params": params,
        "cv": cv,
        "val": val,
        "seed": config.seed,
        "fit_seconds": round(seconds, 3),
        "versions": {"alexfeat": __version__, "scikit-learn": sklearn.__version__, "torch": _torch_version(),
                     "numpy": np.__version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
