"""Which layer transfers best: cross-validated accuracy of each layer (or layers side by side) of a store,
for each classifier, with the same pipelines fit-* builds.

``alexfeat probe STORE`` reads one layer (or group of layers) at a time; a store whose features do not fit
the memory limit is probed on a stratified sample of its rows, which the result states.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold, cross_validate, train_test_split

from alexfeat.atomic import atomic_savefig
from alexfeat.choices import check_choice
from alexfeat.classifiers.choices import PROBES, SCALES
from alexfeat.classifiers.data import check_finite, choose_layers, labelled_rows, read_layers
from alexfeat.classifiers.evaluate import map_labels
from alexfeat.classifiers.fit import FitConfig, build_pipeline
from alexfeat.classifiers.streaming import memory_limit
from alexfeat.errors import AlexfeatError
from alexfeat.figures import pyplot
from alexfeat.store.reader import FeatureStore

__all__ = ["ProbeConfig", "ProbeRow", "ProbeResult", "probe", "plot_probe", "fit_config"]


@dataclass(frozen=True)
class ProbeConfig:
    """What to probe: ``layers`` are names or groups side by side (``a+b``), empty for every layer of the store."""

    store: Path
    layers: tuple[str, ...] = ()
    classifiers: tuple[str, ...] = ("logreg",)  # PROBES: fit-* kinds with their defaults, svm-rbf: --kernel rbf
    folds: int = 5
    max_rows: int | None = None  # probe a stratified sample of this many rows
    test: Path | None = None  # also fit on every (sampled) row and score on this store
    scale: str = "standard"
    seed: int = 0
    jobs: int | None = None  # folds fitted in parallel (-1: every core)
    memory_limit: int | None = None  # bytes one layer's features may take; None: half the available memory

    def __post_init__(self) -> None:
        for kind in self.classifiers:
            check_choice("--classifier", kind, PROBES)
        check_choice("--scale", self.scale, SCALES)
        if not self.classifiers:
            raise AlexfeatError(f"--classifier names no classifier: use {', '.join(PROBES)}")
        if self.folds < 2:
            raise AlexfeatError("--folds must be at least 2")


@dataclass
class ProbeRow:
    """One layer (or group) and classifier: k-fold accuracy, seconds per fold's fit, test accuracy if asked."""

    layer: str
    classifier: str
    dim: int
    mean: float
    std: float
    folds: list[float]
    fit_seconds: float  # mean over the folds
    seconds: float  # all of it: the folds (in parallel with --jobs), the --test fit and its scoring
    test_accuracy: float | None = None

    def fit_command(self, store: str) -> str:
        """The command that fits this classifier on these layers of ``store``."""
        fit_kind, _, kernel = self.classifier.partition("-")
        return (f"alexfeat fit-{fit_kind} {store} --layer {self.layer.replace('+', ',')}"
                + (f" --kernel {kernel}" if kernel else ""))


@dataclass
class ProbeResult:
    store: str
    rows: int  # the rows probed
    total: int  # the store's rows
    sample_reason: str  # why a sample was probed ("" when every row was)
    folds: int
    seconds: float
    results: list[ProbeRow] = field(default_factory=list)
    test: str | None = None
    test_rows: int | None = None

    @property
    def best(self) -> ProbeRow:
        """The highest mean accuracy; among equals, the narrower features (then the earlier row)."""
        return max(self.results, key=lambda r: (round(r.mean, 10), -r.dim))

    def seconds_by_classifier(self) -> dict[str, float]:
        """Each classifier's time over every layer."""
        out: dict[str, float] = {}
        for r in self.results:
            out[r.classifier] = out.get(r.classifier, 0.0) + r.seconds
        return out

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "best": asdict(self.best),
                           "seconds_by_classifier": self.seconds_by_classifier()}, indent=2)

    def summary(self) -> str:
        """What was probed, and on how many rows."""
        rows = f"{self.rows} rows" if not self.sample_reason else \
            f"a stratified sample of {self.rows} of {self.total} rows ({self.sample_reason})"
        test = f"; test accuracy on {self.test_rows} rows of {self.test}" if self.test else ""
        return f"probed {self.store}: {rows}, {self.folds}-fold cross-validation{test}, in {self.seconds:.1f} s"


def probe(config: ProbeConfig) -> ProbeResult:
    """Cross-validated accuracy of every (layer, classifier) pair of ``config``."""
    started = time.perf_counter()
    with FeatureStore.open(config.store) as store:
        groups = [choose_layers(store, spec) for spec in (config.layers or store.layers)]
        labels = labelled_rows(store, "probe it")
        widest = max(sum(store.dim(layer) for layer in group) for group in groups)
        rows, reason = _rows_to_probe(labels, widest, config)
        y = labels[rows]
        _check_folds(y, config.folds, store.classes)
        test = _open_test(config.test, store, groups) if config.test else None
        try:
            results = []
            for group in groups:
                dims = {layer: store.dim(layer) for layer in group}
                X = check_finite(read_layers(store, group, rows), store.path, "+".join(group))
                test_X = check_finite(read_layers(test[0], group), test[0].path, "+".join(group)) if test else None
                for kind in config.classifiers:
                    results.append(_probe_one(config, kind, group, dims, X, y, test_X, test[1] if test else None))
                del X, test_X
        finally:
            if test:
                test[0].close()
    return ProbeResult(str(config.store), len(rows), len(labels), reason, config.folds,
                       time.perf_counter() - started, results, str(config.test) if test else None,
                       len(test[1]) if test else None)


def _rows_to_probe(labels: np.ndarray, dim: int, config: ProbeConfig) -> tuple[np.ndarray, str]:
    """The rows to probe (sorted) and why they are a sample ("" for all rows)."""
    n = len(labels)
    limit = memory_limit(config.memory_limit)
    fit = max(int(limit // (4 * dim)), 1)  # float32 rows of the widest layer (group) that fit the limit
    want, reason = n, ""
    if config.max_rows is not None and config.max_rows < n:
        want, reason = config.max_rows, f"--max-rows {config.max_rows}"
    if fit < want:
        want, reason = fit, f"{n} rows of {dim} features exceed the memory limit of {limit / 1e9:.2f} GB"
    if want == n:
        return np.arange(n), ""
    try:
        kept, _ = train_test_split(np.arange(n), train_size=want, stratify=labels, random_state=config.seed)
    except ValueError as exc:
        raise AlexfeatError(f"cannot draw a stratified sample of {want} rows: {exc}") from None
    return np.sort(kept), reason


def _check_folds(y: np.ndarray, folds: int, classes: list[str]) -> None:
    counts = np.bincount(y, minlength=len(classes))
    present = counts[counts > 0]
    if len(present) < 2:
        raise AlexfeatError("probing needs rows of at least two classes")
    if present.min() < folds:
        name = classes[int(np.flatnonzero(counts == present.min())[0])]
        raise AlexfeatError(f"class {name!r} has {present.min()} rows, fewer than --folds {folds}: probe more rows "
                            f"or use fewer folds")


def _open_test(path: Path, train: FeatureStore, groups: list[tuple[str, ...]]) -> tuple[FeatureStore, np.ndarray]:
    """The --test store and its labels in the training store's class order, checked like a model checks one."""
    test = FeatureStore.open(path)
    try:
        missing = sorted({layer for group in groups for layer in group} - set(test.layers))
        if missing:
            raise AlexfeatError(f"--test {path} has no layer {', '.join(missing)} (it has {', '.join(test.layers)})")
        differences = test.provenance.differences(train.provenance.feature_settings())
        if differences:
            raise AlexfeatError(f"--test {path} was featurized with other settings than {train.path}: "
                                f"{'; '.join(d.replace('the model expects', 'the store has') for d in differences)}")
        labels = map_labels(labelled_rows(test, "score a probe"), test.classes, train.classes, str(path))
    except AlexfeatError:
        test.close()
        raise
    return test, labels


def _probe_one(config: ProbeConfig, kind: str, group: tuple[str, ...], dims: dict[str, int], X: np.ndarray,
               y: np.ndarray, test_X: np.ndarray | None, test_y: np.ndarray | None) -> ProbeRow:
    # The pipeline fit-KIND builds with its defaults (an SVM calibrated, as its model file would be).
    pipeline = build_pipeline(fit_config(kind, config), dims=dims)
    folds = StratifiedKFold(config.folds, shuffle=True, random_state=config.seed)
    started = time.perf_counter()
    try:
        scores = cross_validate(pipeline, X, y, cv=folds, scoring="accuracy", n_jobs=config.jobs,
                                error_score="raise")
        test_accuracy = None
        if test_X is not None:
            test_accuracy = float((clone(pipeline).fit(X, y).predict(test_X) == test_y).mean())
    except ValueError as exc:  # scikit-learn's word on unusable input (too few rows for the MLP's split, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AlexfeatError(f"cannot probe {kind} on {'+'.join(group)}: {first}") from None
    accuracy = scores["test_score"]
    return ProbeRow("+".join(group), kind, int(X.shape[1]), float(accuracy.mean()), float(accuracy.std()),
                    [float(a) for a in accuracy], float(scores["fit_time"].mean()), time.perf_counter() - started,
                    test_accuracy)


def fit_config(kind: str, config: ProbeConfig) -> FitConfig:
    """The fit-* settings a probe's classifier stands for (``svm-rbf``: fit-svm --kernel rbf)."""
    fit_kind, _, kernel = kind.partition("-")
    return FitConfig(kind=fit_kind, store=config.store, scale=config.scale, seed=config.seed,
                     kernel=kernel or "linear")


def plot_probe(result: ProbeResult, path: Path) -> None:
    """Accuracy by layer, one line per classifier, error bars of one standard deviation over the folds."""
    plt = pyplot()
    layers = list(dict.fromkeys(r.layer for r in result.results))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(layers) + 2.5), 3.6))
    kinds = list(dict.fromkeys(r.classifier for r in result.results))
    for k, kind in enumerate(kinds):
        mine = {r.layer: r for r in result.results if r.classifier == kind}
        x = [i for i, layer in enumerate(layers) if layer in mine]
        shift = 0.06 * (k - (len(kinds) - 1) / 2)  # side by side, so that the error bars do not hide each other
        ax.errorbar([i + shift for i in x], [mine[layers[i]].mean for i in x], yerr=[mine[layers[i]].std for i in x],
                    marker="o", capsize=3, label=kind)
    ax.set_xticks(range(len(layers)), layers, rotation=20 if len(layers) > 3 else 0, ha="right"
                  if len(layers) > 3 else "center")
    ax.set_ylabel(f"{result.folds}-fold accuracy")
    ax.set_title(f"{Path(result.store).name}: {result.rows} rows" + (" (sample)" if result.sample_reason else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic_savefig(fig, path, dpi=100)
    finally:
        plt.close(fig)
