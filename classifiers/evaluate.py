"""Score a classifier on a labelled store: accuracy, per-class metrics, confusion matrix."""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support

from alexfeat.classifiers.data import labelled_rows
from alexfeat.classifiers.model_file import ClassifierModel
from alexfeat.atomic import atomic_savefig
from alexfeat.classifiers.streaming import predict_store
from alexfeat.errors import AlexfeatError
from alexfeat.figures import pyplot
from alexfeat.store.reader import FeatureStore

__all__ = ["Report", "score_predictions", "evaluate_store", "map_labels", "plot_confusion"]


@dataclass
class Report:
    """Scores of predictions against true labels; ``to_json`` has ``accuracy`` at its top. ``skipped``:
    (path, reason) of the images that could not be decoded, so are not in ``n``."""

    accuracy: float
    balanced_accuracy: float
    n: int
    classes: list[str]
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]
    model: str = ""
    data: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def score_predictions(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> Report:
    """Metrics for integer labels indexing ``classes``."""
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                 for name, p, r, f, s in zip(classes, precision, recall, f1, support)}
    return Report(
        accuracy=float(accuracy_score(y_true, y_pred)),
        balanced_accuracy=float(balanced_accuracy_score(y_true, y_pred)),
        n=int(len(y_true)),
        classes=list(classes),
        per_class=per_class,
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    )


def map_labels(labels: np.ndarray, data_classes: list[str], model_classes: list[str], source: str) -> np.ndarray:
    """Re-index labels named by ``data_classes`` onto ``model_classes``; unknown classes are an error."""
    unknown = sorted(set(data_classes[i] for i in np.unique(labels)) - set(model_classes))
    if unknown:
        raise AlexfeatError(f"{source} has classes the model does not know: {', '.join(unknown)} "
                            f"(the model knows {', '.join(model_classes)})")
    lookup = np.array([model_classes.index(c) if c in model_classes else -1 for c in data_classes])
    return lookup[labels]


def evaluate_store(model_path: Path, store_path: Path) -> Report:
    model = ClassifierModel.load(model_path)
    with FeatureStore.open(store_path) as store:
        model.check_store(store)
        labels = labelled_rows(store, "evaluate a model")
        y_true = map_labels(labels, store.classes, model.classes, str(store_path))
        y_pred = predict_store(model, store)  # chunk by chunk: a store larger than memory evaluates too
    report = score_predictions(y_true, y_pred, model.classes)
    report.model, report.data = str(model_path), str(store_path)
    return report


def plot_confusion(report: Report, path: Path) -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()

    size = max(4.0, 0.6 * len(report.classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.array(report.confusion_matrix), display_labels=report.classes).plot(
        ax=ax, colorbar=False, xticks_rotation=45 if len(report.classes) > 4 else 0)
    title = f"{_short(report.model)} on {_short(report.data)}"  # wrapped: a checkpoint's notes make it long
    ax.set_title("\n".join(textwrap.wrap(title, width=int(size * 9), break_on_hyphens=False)) +
                 f"\naccuracy {report.accuracy:.4f} (n={report.n})", fontsize=10)
    fig.tight_layout()
    try:
        atomic_savefig(fig, path, dpi=120)
    finally:
        plt.close(fig)


def _short(path: str) -> str:
    """A path's last two parts: enough to tell runs/ft/best.pt from runs/scratch/best.pt."""
    return "/".join(Path(path).parts[-2:]) if path else "?"
