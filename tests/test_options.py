"""No option is silently ignored: one that does not apply to the chosen mode is an error that says so."""

from __future__ import annotations

import pytest

from tests.conftest import make_class_folder


@pytest.fixture
def setup(cli, blobs, tmp_path):
    train, test = blobs["separable"]
    model = tmp_path / "m.joblib"
    assert cli("fit-logreg", train, "-o", model).exit_code == 0
    return dict(train=train, test=test, model=model, images=make_class_folder(tmp_path / "imgs", per_class=1),
                ckpt=tmp_path / "best.pt", out=tmp_path / "out.h5")


@pytest.mark.parametrize("args, flags, why", [
    (("fit-svm", "{train}", "--gamma", "0.1"), "--gamma", "with --kernel linear"),
    (("fit-svm", "{train}", "--search", "-C", "10"), "--C", "with --search"),
    (("fit-svm", "{train}", "--kernel", "rbf", "--search", "--gamma", "0.1"), "--gamma", "with --search"),
    (("fit-logreg", "{train}", "--search", "-C", "10"), "--C", "with --search"),
    (("fit-mlp", "{train}", "--search", "--alpha", "0.1"), "--alpha", "with --search"),
    (("fit-logreg", "{train}", "--jobs", "2"), "--jobs", "without --search"),
    (("fit-logreg", "{train}", "--seed", "3"), "--seed", "deterministic"),
    (("fit-svm", "{train}", "--kernel", "rbf", "--seed", "3"), "--seed", "deterministic"),
    (("fit-logreg", "{train}", "--streaming", "--memory-limit", "2"), "--memory-limit", "with --streaming"),
    (("evaluate", "{model}", "{test}", "--overwrite"), "--overwrite", "without --report or --plot"),
    (("predict", "{model}", "{test}", "--overwrite"), "--overwrite", "without --out"),
    (("predict", "{model}", "{test}", "--weights", "{model}"), "--weights", "to a feature store"),
    (("predict", "{model}", "{test}", "--device", "cpu", "--batch-size", "8", "--workers", "0"),
     "--device, --batch-size, --workers", "to a feature store"),
    (("predict", "{model}", "{test}", "--max-pixels", "1000"), "--max-pixels", "to a feature store"),
    (("predict", "{ckpt}", "{images}", "--weights", "{model}"), "--weights", "to a trainer checkpoint"),
    (("serve", "{model}", "--model", "resnet18", "--pool", "avg"), "--model, --pool", "with a MODEL file"),
    (("featurize", "{images}", "{out}", "--seed", "3"), "--seed", "unless --weights none"),
    (("featurize", "{images}", "{out}", "--weights", "none", "--no-download"), "--download",
     "unless --weights imagenet"),
    (("featurize", "{images}", "{out}", "--part-size", "5"), "--part-size", "without --parts"),
    (("featurize", "{images}", "--parts", "{out}", "--resume"), "--resume", "with --parts"),
    (("featurize", "{images}", "{out}", "--actors", "2"), "--actors", "without --engine ray"),
    (("featurize", "{images}", "{out}", "--label-key", "cls"), "--label-key", "except to tar shards"),
    (("featurize", "{images}", "{out}", "--path-column", "file"), "--path-column", "except to Parquet lists"),
])
def test_an_option_that_does_not_apply_is_refused(cli, setup, args, flags, why):
    result = cli(*[a.format(**setup) for a in args])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert f"{flags} do" in result.output and why in result.output
    assert not setup["out"].exists()


@pytest.mark.parametrize("args", [
    ("fit-svm", "{train}", "--kernel", "rbf", "--gamma", "0.1", "-C", "3"),
    ("fit-logreg", "{train}", "--seed", "3", "--val-split", "0.2"),
    ("fit-mlp", "{train}", "--seed", "3", "--max-epochs", "5"),
    ("fit-logreg", "{train}", "--search", "--jobs", "1"),
])
def test_options_that_apply_are_taken(cli, setup, tmp_path, args):
    result = cli(*[a.format(**setup) for a in args], "-o", tmp_path / "new.joblib")
    assert result.exit_code == 0, result.output
