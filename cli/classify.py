"""``fit-svm``, ``fit-logreg``, ``fit-mlp``, ``evaluate``, ``predict`` and ``info``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from alexfeat.cli.common import (Crop, Device, Overwrite, PrecisionOpt, Resize, Tta, TtaOpt, check_results,
                                 choice_enum, given, handle_errors, refuse, write_results)
from alexfeat.classifiers.choices import KERNELS, SCALES
from alexfeat.errors import AlexfeatError
from alexfeat.paths import model_kind
from alexfeat.output import check_output
from alexfeat.featurizer.sources.folders import DEFAULT_MAX_PIXELS
from alexfeat.progress import stderr

# Core modules (scikit-learn, torch) are imported inside the commands: --help answers at once.


Scale = choice_enum("Scale", SCALES)
Kernel = choice_enum("Kernel", KERNELS)


Store = Annotated[Path, typer.Argument(help="Feature store (.h5) written by alexfeat featurize, or a folder of parts.")]
Layer = Annotated[Optional[str], typer.Option(metavar="LAYER[,LAYER...]",
                                              help="Layer to train on (default: the store's only layer); several, "
                                                   "a,b, are fitted side by side, each scaled on its own.")]
ScaleOpt = Annotated[Scale, typer.Option(help="Feature scaling before the classifier.")]
Search = Annotated[bool, typer.Option("--search", help="Cross-validated grid search over the "
                                                        "regularisation (and gamma), then refit on all rows.")]
ValSplit = Annotated[float, typer.Option(min=0.0, max=0.95, help="Hold out this fraction (stratified) and report on it.")]
Seed = Annotated[int, typer.Option(help="Seed of the random split, search folds and fit.")]
Jobs = Annotated[Optional[int], typer.Option(help="Parallel jobs for the search (-1: all cores).")]
Out = Annotated[Optional[Path], typer.Option("--out", "-o", help="Model file (default: next to the store, "
                                                                 "named after the model kind and layer).")]
Streaming = Annotated[bool, typer.Option("--streaming", help="Fit over row chunks (SGD / partial_fit), for stores "
                                                              "larger than memory; chosen by itself past "
                                                              "--memory-limit.")]
MemoryLimit = Annotated[Optional[float], typer.Option(min=0.0, help="GB the features may take in memory before "
                                                                    "fitting streams (default: half the available).")]
Pca = Annotated[Optional[int], typer.Option(min=1, help="With --streaming: IncrementalPCA to K components first.")]


def _refuse_checkpoint_options(ctx: typer.Context, tta, *also: str) -> None:
    """A .joblib model sees features made as its training store's were (provenance-checked): only a
    checkpoint runs at another input size or with test-time augmentation (--tta none is no change);
    ``also``: more options that apply to checkpoints only."""
    refuse(ctx, "to a .joblib model (for checkpoints only)",
           *(["tta"] if tta != Tta.none else []), "resize", "crop", *also)


def _run_fit(memory_limit: float | None = None, **settings) -> None:
    from alexfeat.classifiers.fit import FitConfig, fit_classifier

    limit = None if memory_limit is None else int(memory_limit * 1e9)
    result = fit_classifier(FitConfig(memory_limit=limit, **settings))
    typer.echo(result.summary())


@handle_errors
def fit_svm_cli(
    ctx: typer.Context,
    store: Store, layer: Layer = None,
    kernel: Annotated[Kernel, typer.Option(help="linear (LinearSVC) or rbf (SVC).")] = Kernel.linear,
    c: Annotated[Optional[float], typer.Option("-C", "--C", help="Inverse regularisation (default 1).")] = None,
    gamma: Annotated[str, typer.Option(metavar="scale|auto|NUM", help="RBF kernel width: scale, or a number.")]
    = "scale",
    scale: ScaleOpt = Scale.standard, search: Search = False, val_split: ValSplit = 0.0, seed: Seed = 0,
    jobs: Jobs = None, out: Out = None, overwrite: Overwrite = False,
    streaming: Streaming = False, memory_limit: MemoryLimit = None, pca: Pca = None,
) -> None:
    """Fit a support vector machine (probabilities by sigmoid calibration)."""
    if kernel == Kernel.linear:
        refuse(ctx, "with --kernel linear (gamma is the RBF kernel's width)", "gamma")
    _refuse_unused_fit_options(ctx, search, val_split, streaming, seed_used=kernel == Kernel.linear)
    _run_fit(kind="svm", store=store, out=out, overwrite=overwrite, layer=layer, scale=scale.value, search=search,
             val_split=val_split, seed=seed, jobs=jobs, C=c, kernel=kernel.value, gamma=_gamma(gamma),
             streaming=streaming, memory_limit=memory_limit, pca=pca)


@handle_errors
def fit_logreg_cli(
    ctx: typer.Context, store: Store, layer: Layer = None,
    c: Annotated[Optional[float], typer.Option("-C", "--C", help="Inverse regularisation (default 1).")] = None,
    scale: ScaleOpt = Scale.standard, search: Search = False, val_split: ValSplit = 0.0, seed: Seed = 0,
    jobs: Jobs = None, out: Out = None, overwrite: Overwrite = False,
    streaming: Streaming = False, memory_limit: MemoryLimit = None, pca: Pca = None,
) -> None:
    """Fit a (multinomial) logistic regression."""
    _refuse_unused_fit_options(ctx, search, val_split, streaming, seed_used=False)
    _run_fit(kind="logreg", store=store, out=out, overwrite=overwrite, layer=layer, scale=scale.value, search=search,
             val_split=val_split, seed=seed, jobs=jobs, C=c, streaming=streaming, memory_limit=memory_limit, pca=pca)


@handle_errors
def fit_mlp_cli(
    ctx: typer.Context, store: Store, layer: Layer = None,
    hidden: Annotated[int, typer.Option(min=1, help="Units in the one hidden layer.")] = 256,
    alpha: Annotated[Optional[float], typer.Option(help="L2 penalty (default 1e-4).")] = None,
    max_epochs: Annotated[int, typer.Option(min=1, help="Epoch limit; early stopping on a 10% split.")] = 200,
    scale: ScaleOpt = Scale.standard, search: Search = False, val_split: ValSplit = 0.0, seed: Seed = 0,
    jobs: Jobs = None, out: Out = None, overwrite: Overwrite = False,
    streaming: Streaming = False, memory_limit: MemoryLimit = None, pca: Pca = None,
) -> None:
    """Fit a multi-layer perceptron with one hidden layer (256 units by default)."""
    _refuse_unused_fit_options(ctx, search, val_split, streaming, seed_used=True)
    _run_fit(kind="mlp", store=store, out=out, overwrite=overwrite, layer=layer, scale=scale.value, search=search,
             val_split=val_split, seed=seed, jobs=jobs, hidden=hidden, alpha=alpha, max_epochs=max_epochs,
             streaming=streaming, memory_limit=memory_limit, pca=pca)


def _refuse_unused_fit_options(ctx: typer.Context, search: bool, val_split: float, streaming: bool,
                               seed_used: bool) -> None:
    """``seed_used``: whether the classifier itself draws random numbers (the split, the search and
    streaming always do)."""
    if streaming:
        refuse(ctx, "with --streaming, which streams whatever the size of the features", "memory_limit")
        seed_used = True
    if search:
        refuse(ctx, "with --search, which chooses the regularisation (and gamma) itself", "c", "alpha",
               "gamma")
    else:
        refuse(ctx, "without --search (it runs the search's folds in parallel)", "jobs")
        if not seed_used and val_split == 0:
            refuse(ctx, "here: this fit is deterministic (a seed applies with --val-split or --search)", "seed")


def _gamma(text: str) -> str | float:
    if text in ("scale", "auto"):
        return text
    try:
        return float(text)
    except ValueError:
        raise AlexfeatError(f"--gamma takes scale, auto or a number, got {text!r}") from None


@handle_errors
def evaluate_cli(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="A .joblib model from fit-*, or a trainer checkpoint (.pt).")],
    data: Annotated[Path, typer.Argument(help="A labelled feature store (.h5); for a checkpoint, an image folder or "
                                              "a labelled list file (RUN_DIR/val.csv).")],
    report: Annotated[Optional[Path], typer.Option(help="Write the scores as JSON here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write the confusion matrix here: PNG, or another format "
                                                      "matplotlib writes, by the extension.")] = None,
    overwrite: Overwrite = False,
    tta: TtaOpt = Tta.none,
    resize: Resize = None,
    crop: Crop = None,
    device: Annotated[Device, typer.Option(help="Where a checkpoint runs.")] = Device.auto,
    precision: PrecisionOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch, for a checkpoint.")] = 64,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decoding processes, for a checkpoint.")] = None,
) -> None:
    """Score a model on labelled data: accuracy, per-class precision/recall/F1, confusion matrix.

    A checkpoint may be run at another input size (--crop, --resize) and with --tta.
    """
    checkpoint = model_kind(model) == "checkpoint"
    check_results(ctx, report, plot, overwrite, (model, data))
    from alexfeat.classifiers.evaluate import plot_confusion
    from alexfeat.classifiers.predictor import load_predictor

    if not checkpoint:  # the store holds the features already: no network runs
        _refuse_checkpoint_options(ctx, tta, "device", "precision", "batch_size", "workers")
    predictor = load_predictor(model, device=device.value, tta=tta.value if checkpoint else None, resize=resize,
                               crop=crop, precision=precision and precision.value)
    result = predictor.evaluate(data, batch_size=batch_size, workers=workers)
    warn_skipped(result.skipped)
    write_results(result, report, plot, plot_confusion, print_report, figure="confusion matrix")


def warn_skipped(skipped: list[tuple[str, str]]) -> None:
    """One line on stderr for each input image that could not be used, and why."""
    for path, reason in skipped:
        stderr.print(f"warning: skipped {path}: {reason}", soft_wrap=True)


def print_report(report) -> None:
    """The scores and the confusion matrix of a classifiers.evaluate.Report, as tables."""
    console = Console(highlight=False, markup=False)  # class names and paths may hold [brackets]
    console.print(f"{report.model} on {report.data}", soft_wrap=True)
    console.print(f"accuracy {report.accuracy:.4f}   balanced accuracy {report.balanced_accuracy:.4f}   n={report.n}"
                  + (f" ({len(report.skipped)} skipped)" if report.skipped else ""))
    table = Table("class", "precision", "recall", "f1", "support")
    for name, m in report.per_class.items():
        table.add_row(name, f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", str(m["support"]))
    console.print(table)
    matrix = Table("true \\ predicted", *report.classes, title="confusion matrix")
    for name, row in zip(report.classes, report.confusion_matrix):
        matrix.add_row(name, *[str(v) for v in row])
    console.print(matrix)


@handle_errors
def predict_cli(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="A .joblib model from fit-*, or a trainer checkpoint (.pt).")],
    inputs: Annotated[list[Path], typer.Argument(help="A feature store (.h5), or images: a list file, or folders "
                                                      "and image files (as many as you like).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="CSV to write (default: a table).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="The weights file the model's features came from, "
                                                         "when they came from a file.")] = None,
    device: Annotated[Device, typer.Option(help="Images: where the network runs.")] = Device.auto,
    precision: PrecisionOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images: images per forward pass.")] = 64,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Images: decoding processes "
                                                               "(default: from CPU count).")] = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="Skip images with more pixels than this "
                                                        "(decompression-bomb guard).")] = DEFAULT_MAX_PIXELS,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    overwrite: Overwrite = False,
    tta: TtaOpt = Tta.none,
    resize: Resize = None,
    crop: Crop = None,
) -> None:
    """Predict classes and probabilities for a store or for images.

    A checkpoint may be run at another input size (--crop, --resize) and with --tta.

    Model files are joblib (pickle) files, which run code when loaded: only use models you trust.
    """
    from alexfeat.classifiers.predict import is_store_input
    from alexfeat.classifiers.predictor import load_predictor

    checkpoint = model_kind(model) == "checkpoint"
    if out is None:
        refuse(ctx, "without --out", "overwrite")
    else:
        check_output(out, overwrite=overwrite, inputs=(model, *inputs, weights))
    if checkpoint:
        refuse(ctx, "to a trainer checkpoint, which carries its own weights", "weights")
    else:  # a given --tta is checked against the model's training store (predict refuses another)
        refuse(ctx, "to a .joblib model (for checkpoints only)", "resize", "crop")
    if is_store_input(inputs):
        refuse(ctx, "to a feature store, whose features are already computed", "weights", "device", "precision",
               "batch_size", "workers", "max_pixels", *([] if checkpoint else ["tta"]))
    predictor = load_predictor(model, weights=weights, device=device.value, resize=resize, crop=crop,
                               tta=tta.value if checkpoint or given(ctx, "tta") else None,
                               precision=precision and precision.value)
    result = predictor.predict(inputs, batch_size, workers, quiet, max_pixels)
    warn_skipped(result.skipped)
    if out:
        result.write_csv(out)
        typer.echo(f"wrote {len(result.paths) + len(result.skipped)} rows to {out}: {result.summary()}")
    else:
        print_predictions(result)


def print_predictions(result) -> None:
    """Plain aligned lines, one for every input in input order (full paths, never cut; the eight first
    classes' probabilities, or why the input was skipped)."""
    rows = result.rows()
    width = max([len("path"), *(len(path) for path, *_ in rows)])
    shown = result.classes[:8]
    head = "  ".join(f"p({c})"[:10].rjust(10) for c in shown)
    typer.echo(f"{'path'.ljust(width)}  {'prediction':12s}  {head}")
    for path, pred, probs, error in rows:
        typer.echo(f"{path.ljust(width)}  {pred[:12]:12s}  " + "  ".join(f"{p:10.4f}" for p in probs[:8])
                   if probs is not None else f"{path.ljust(width)}  {'(skipped)':12s}  {error}")


@handle_errors
def info_cli(file: Annotated[Path, typer.Argument(help="A feature store, a model file or a checkpoint.")]) -> None:
    """Summarise a feature store, a classifier model or a trainer checkpoint."""
    from alexfeat.info import describe  # h5py, and torch or scikit-learn for the files that need them

    for line in describe(file):
        typer.echo(line)
