"""``alexfeat demo``: the main job end to end on the embedded digits data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alexfeat.cli.common import handle_errors
from alexfeat.cli.classify import print_report
from alexfeat.atomic import atomic_write_text
from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.arch import Arch
from alexfeat.progress import stderr


@handle_errors
def demo_cli(
    folder: Annotated[Path, typer.Option(help="Where the demo writes its images, stores and models.")] = Path("data/demo"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Write scikit-learn's digits as PNGs, featurize them with AlexNet, fit and evaluate a classifier."""
    from alexfeat.digits import write_digits
    from alexfeat.featurizer.featurize import featurize
    from alexfeat.featurizer.run import FeaturizeConfig
    from alexfeat.featurizer.models import load_model

    train_dir, test_dir = write_digits(folder / "digits")
    typer.echo(f"demo data: {train_dir} and {test_dir} (scikit-learn's handwritten digits, 10 classes)")
    weights = "imagenet"
    try:
        load_model(Arch(model="alexnet"), "imagenet")
    except AlexfeatError as exc:
        stderr.print(f"note: {exc}", soft_wrap=True)
        stderr.print("note: the demo goes on with random-init weights (--weights none); "
                     "pretrained features would be far stronger", soft_wrap=True)
        weights = "none"
    stores = {}
    for split, images in (("train", train_dir), ("test", test_dir)):
        out = folder / f"{split}.h5"
        result = featurize(FeaturizeConfig(images=images, out=out, weights=weights, layers=("fc7",),
                                           overwrite=True, quiet=quiet))
        typer.echo(result.summary())
        stores[split] = out
    run_classifier_demo(stores["train"], stores["test"], folder)


def run_classifier_demo(train: Path, test: Path, folder: Path) -> None:
    """Fit a logistic regression on the train store and evaluate it on the test store."""
    from alexfeat.classifiers.evaluate import evaluate_store
    from alexfeat.classifiers.fit import FitConfig, fit_classifier

    fitted = fit_classifier(FitConfig("logreg", train, folder / "logreg-fc7.joblib", overwrite=True))
    typer.echo(fitted.summary())
    report = evaluate_store(fitted.path, test)
    atomic_write_text(folder / "report.json", report.to_json())
    print_report(report)
    typer.echo(f"demo done: test accuracy {report.accuracy:.4f}; report in {folder / 'report.json'}")
