"""A one-hidden-layer MLP whose epoch count is chosen by early stopping, then refit on all rows."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.utils.validation import check_is_fitted

__all__ = ["EarlyStoppedMLP"]


class EarlyStoppedMLP(ClassifierMixin, BaseEstimator):
    """scikit-learn's MLPClassifier, trained in two passes.

    Pass 1 trains with early stopping on a stratified ``validation_fraction`` split and
    records the last epoch with the best validation accuracy. Pass 2 retrains on every row
    for that many epochs. (MLPClassifier alone keeps the first epoch that reached the
    best validation score, which on small validation splits is an undertrained model,
    and never learns from the held-out rows.) ``best_epochs_`` records the choice.
    """

    def __init__(self, hidden: int = 256, alpha: float = 1e-4, batch_size: int = 64, max_epochs: int = 200,
                 validation_fraction: float = 0.1, patience: int = 10, random_state: int | None = 0):
        self.hidden = hidden
        self.alpha = alpha
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.random_state = random_state

    def _mlp(self, **kwargs) -> MLPClassifier:
        return MLPClassifier(hidden_layer_sizes=(self.hidden,), alpha=self.alpha, batch_size=self.batch_size,
                             random_state=self.random_state, **kwargs)

    def fit(self, X: np.ndarray, y: np.ndarray) -> "EarlyStoppedMLP":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=ConvergenceWarning)  # pass 2 stops on purpose
            warnings.filterwarnings("ignore", message="Got `batch_size`")  # clipped on tiny stores
            probe = self._mlp(max_iter=self.max_epochs, early_stopping=True, n_iter_no_change=self.patience,
                              validation_fraction=self.validation_fraction).fit(X, y)
            scores = probe.validation_scores_
            # Ties are common (accuracy on a small split saturates): take the last, best-trained one.
            self.best_epochs_ = len(scores) - int(np.argmax(scores[::-1]))
            self.validation_score_ = float(np.max(scores))
            self.mlp_ = self._mlp(max_iter=self.best_epochs_, early_stopping=False, n_iter_no_change=self.max_epochs,
                                  tol=0.0).fit(X, y)
        self.classes_ = self.mlp_.classes_
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "mlp_")
        return self.mlp_.predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "mlp_")
        return self.mlp_.predict(X)
