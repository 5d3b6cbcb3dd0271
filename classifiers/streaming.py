"""Classifiers on stores larger than memory: fit and predict over row chunks, memory bounded by the chunk.

Fitting makes one pass of ``StandardScaler.partial_fit`` (and ``IncrementalPCA.partial_fit`` with
``--pca``), then epochs of ``partial_fit`` over shuffled chunks: ``SGDClassifier`` with log-loss
(logistic regression) or hinge (linear SVM; an RBF SVM is a ``Nystroem`` map fitted on a sample,
then the hinge), or ``MLPClassifier``. A held-out sample stops the epochs early, and for the
hinge calibrates probabilities (sigmoid). The result is an ordinary Pipeline, so the model file,
``evaluate``, ``predict`` and ``info`` treat it like any other.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import IncrementalPCA
from sklearn.frozen import FrozenEstimator
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from alexfeat.errors import AlexfeatError

__all__ = ["StreamingFit", "fit_streaming", "predict_store", "memory_limit", "available_memory", "chunk_rows"]

_CHUNK_BYTES = 64 << 20  # one training chunk of float32 features
_HOLD_BYTES = 128 << 20  # the held-out sample kept in memory
_BLOCK_ROWS = 256  # rows read contiguously; chunks mix blocks from all over the store
SGD_EPOCHS = 50
PATIENCE = {"logreg": 3, "svm": 3, "mlp": 10}  # epochs without a better held-out score before stopping


def memory_limit(limit: int | None) -> int:
    """Bytes the features may take in memory: ``limit`` (--memory-limit), else half the memory available now."""
    return limit if limit is not None else available_memory() // 2


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable), or the physical total where that is unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def chunk_rows(dim: int) -> int:
    return int(max(_BLOCK_ROWS, min(65536, _CHUNK_BYTES // (4 * dim))) // _BLOCK_ROWS * _BLOCK_ROWS)


def predict_store(model, store, method: str = "predict", rows: np.ndarray | None = None) -> np.ndarray:
    """``model.predict`` (or ``predict_proba``) over a store's rows, one chunk in memory at a time."""
    layers = model.layers
    step = chunk_rows(sum(store.dim(layer) for layer in layers))
    call = getattr(model, method)
    if rows is None:
        chunks = zip(*(store.iter_rows(layer, step) for layer in layers))
    else:
        chunks = ([store.features(layer, rows[i:i + step]) for layer in layers] for i in range(0, len(rows), step))
    outs = [call(model.matrix(dict(zip(layers, blocks)))) for blocks in chunks]
    if outs:
        return np.concatenate(outs)
    return np.empty((0,) if method == "predict" else (0, len(model.classes)))


@dataclass
class StreamingFit:
    pipeline: Pipeline
    params: dict
    best_epochs: int
    holdout_accuracy: float
    n_fit: int
    n_holdout: int


class _Rows:
    """Selected rows of a store's layer, read in contiguous blocks."""

    def __init__(self, store, layer: str, rows: np.ndarray, labels: np.ndarray):
        self.store, self.layer = store, layer
        self.mask = np.zeros(len(store), dtype=bool)
        self.mask[rows] = True
        self.labels = labels
        self.n = len(rows)
        self.chunk = chunk_rows(store.dim(layer))

    def _block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        keep = self.mask[start:stop]
        X = self.store.features(self.layer, slice(start, stop))[keep].astype(np.float32, copy=False)
        return X, self.labels[start:stop][keep]

    def in_order(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self.mask), self.chunk):
            X, y = self._block(start, start + self.chunk)
            if len(y):
                yield X, y

    def shuffled(self, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Chunks of random blocks (a class-sorted store still gives mixed chunks), rows shuffled within."""
        starts = rng.permutation(np.arange(0, len(self.mask), _BLOCK_ROWS))
        per_chunk = self.chunk // _BLOCK_ROWS
        for i in range(0, len(starts), per_chunk):
            parts = [self._block(s, s + _BLOCK_ROWS) for s in np.sort(starts[i:i + per_chunk])]
            X = np.concatenate([p[0] for p in parts])
            y = np.concatenate([p[1] for p in parts])
            if len(y):
                order = rng.permutation(len(y))
                yield X[order], y[order]


def fit_streaming(config, store, layer: str, rows: np.ndarray, labels: np.ndarray) -> StreamingFit:
    """Fit ``config.kind`` on ``rows`` of ``store`` without holding them all; labels index ``store.classes``."""
    if config.search:
        raise AlexfeatError("--search needs the features in memory; drop --search (or --streaming), or pass a "
                            "larger --memory-limit")
    rng = np.random.default_rng(config.seed)
    classes = np.unique(labels[rows])
    dim = store.dim(layer)
    n_hold = int(min(max(0.1 * len(rows), 10 * len(classes)), 20000, _HOLD_BYTES // (4 * dim)))
    if len(rows) - n_hold < 2 * len(classes):
        raise AlexfeatError(f"{store.path} has too few labelled rows ({len(rows)}) to fit while streaming")
    hold = np.sort(rng.choice(rows, n_hold, replace=False))
    fit_rows = np.setdiff1d(rows, hold)
    data = _Rows(store, layer, fit_rows, labels)
    H = store.features(layer, hold).astype(np.float32, copy=False)
    y_hold = labels[hold]

    steps = [("scale", _fitted_scaler(config.scale, data))]
    if config.pca:
        steps.append(("pca", _fitted_pca(config.pca, data, steps)))
    if config.kind == "svm" and config.kernel == "rbf":
        steps.append(("map", _fitted_nystroem(config, data, steps, rng)))
    transform = Pipeline(steps)
    H_t = transform.transform(H)
    del H  # the raw held-out rows are not needed again: 128 MB less at the peak

    if config.kind == "svm":  # half the held-out rows stop the epochs, half calibrate the scores
        half = len(y_hold) // 2
        H_stop, y_stop, H_cal, y_cal = H_t[:half], y_hold[:half], H_t[half:], y_hold[half:]
    else:
        H_stop, y_stop, H_cal, y_cal = H_t, y_hold, None, None
    clf = _classifier(config, len(fit_rows))
    epochs = config.max_epochs if config.kind == "mlp" else SGD_EPOCHS
    best, best_score, best_epoch, waited = None, -np.inf, 0, 0
    for epoch in range(1, epochs + 1):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Got `batch_size`")  # a chunk smaller than a batch
            for X, y in data.shuffled(rng):
                clf.partial_fit(transform.transform(X), y, classes=classes)
        score = _holdout_score(clf, H_stop, y_stop, classes)
        waited = 0 if score > best_score + 1e-4 * abs(best_score) else waited + 1
        if score >= best_score:  # ties keep the later, longer-trained model
            best, best_score, best_epoch = copy.deepcopy(clf), score, epoch
        if waited >= PATIENCE[config.kind]:
            break
    accuracy = float((best.predict(H_stop) == y_stop).mean())
    params = {k: v for k, v in best.get_params().items() if isinstance(v, (int, float, str, type(None)))}
    if config.kind == "svm":
        best = CalibratedClassifierCV(FrozenEstimator(best), method="sigmoid").fit(H_cal, y_cal)
    pipeline = Pipeline([*steps, ("clf", best)])
    return StreamingFit(pipeline, params, best_epoch, accuracy, len(fit_rows), n_hold)


def _holdout_score(clf, X: np.ndarray, y: np.ndarray, classes: np.ndarray) -> float:
    """The MLP: minus the log-loss (it keeps improving after accuracy saturates on small held-out sets).
    SGD: accuracy (its one-vs-rest probabilities grow overconfident while accuracy still improves)."""
    if isinstance(clf, MLPClassifier):
        return -log_loss(y, clf.predict_proba(X), labels=classes)
    return float((clf.predict(X) == y).mean())


def _fitted_scaler(scale: str, data: _Rows):
    if scale == "none":
        return "passthrough"
    if scale == "l2":
        return Normalizer(norm="l2")
    scaler = StandardScaler()
    for X, _ in data.in_order():
        scaler.partial_fit(X)
    return scaler


def _fitted_pca(k: int, data: _Rows, steps: list) -> IncrementalPCA:
    if not 1 <= k < data.store.dim(data.layer):
        raise AlexfeatError(f"--pca must be between 1 and the feature dimension - 1, got {k}")
    pca = IncrementalPCA(n_components=k)
    before = Pipeline(steps)
    used = 0
    for X, _ in data.in_order():
        if len(X) >= k:  # IncrementalPCA needs at least k rows per call
            pca.partial_fit(before.transform(X))
            used += len(X)
    if not used:
        raise AlexfeatError(f"--pca {k} is larger than a chunk of rows ({data.chunk}); choose a smaller K")
    return pca


def _fitted_nystroem(config, data: _Rows, steps: list, rng: np.random.Generator) -> Nystroem:
    X = next(data.shuffled(rng))[0]
    X = Pipeline(steps).transform(X)
    gamma = config.gamma
    if gamma == "scale":
        gamma = 1.0 / (X.shape[1] * float(X.var()) or 1.0)
    elif gamma == "auto":
        gamma = 1.0 / X.shape[1]
    return Nystroem(gamma=float(gamma), n_components=min(1024, len(X)), random_state=config.seed).fit(X)


def _classifier(config, n: int):
    C = 1.0 if config.C is None else config.C
    if config.kind == "mlp":
        return MLPClassifier(hidden_layer_sizes=(config.hidden,), alpha=1e-4 if config.alpha is None else config.alpha,
                             batch_size=256, random_state=config.seed)
    # LogisticRegression and LinearSVC minimise C * sum(loss) + |w|^2 / 2; SGD the mean loss + alpha |w|^2 / 2.
    loss = "log_loss" if config.kind == "logreg" else "hinge"
    return SGDClassifier(loss=loss, alpha=1.0 / (C * n), average=True, random_state=config.seed)
