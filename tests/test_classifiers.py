"""A user fits classifiers on feature stores, evaluates them, and predicts on stores and images."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from alexfeat.classifiers.model_file import ClassifierModel
from alexfeat.classifiers.data import read_features
from alexfeat import FeatureStore
from tests.conftest import make_class_folder, make_store

SMALL = ("--resize", "72", "--crop", "64", "--workers", "0", "-q")


@pytest.mark.parametrize("command", ["fit-svm", "fit-logreg", "fit-mlp"])
def test_fit_evaluate_on_separable_and_overlapping_data(cli, blobs, tmp_path, command):
    accuracies = {}
    for name, (train, test) in blobs.items():
        model = tmp_path / f"{name}-{command}.{'joblib' if name == 'separable' else 'pkl'}"  # -o takes any name
        result = cli(command, train, "-o", model)
        assert result.exit_code == 0, result.output
        assert f"saved {model}" in result.output
        report = tmp_path / f"{name}.json"
        result = cli("evaluate", model, test, "--report", report, "--plot", tmp_path / f"{name}.png")
        assert result.exit_code == 0, result.output
        assert "confusion matrix" in result.output and "balanced accuracy" in result.output
        scores = json.loads(report.read_text())
        assert list(scores)[0] == "accuracy" and set(scores["per_class"]) == {"a", "b", "c"}
        assert sum(map(sum, scores["confusion_matrix"])) == 60
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
        accuracies[name] = scores["accuracy"]
        assert cli("info", model).output.startswith(f"classifier {model}: ")
    assert accuracies["separable"] == 1.0
    assert 0.4 < accuracies["overlapping"] < 0.95  # learns something, cannot be perfect


def test_model_round_trip_equals_in_memory_predictions(blobs, tmp_path):
    from alexfeat.classifiers.fit import FitConfig, fit_classifier

    train, test = blobs["overlapping"]
    result = fit_classifier(FitConfig("svm", train, tmp_path / "svm.joblib", kernel="rbf", seed=3))
    loaded = ClassifierModel.load(tmp_path / "svm.joblib")
    with FeatureStore.open(test) as store:
        X = read_features(store, "fc7")
    np.testing.assert_array_equal(loaded.pipeline.predict_proba(X), result.model.pipeline.predict_proba(X))
    probs = loaded.pipeline.predict_proba(X)
    assert np.allclose(probs.sum(axis=1), 1) and (probs > 0).all() and (probs < 1).all()  # calibrated


def test_search_and_validation_split_are_recorded(cli, blobs, tmp_path):
    train, _ = blobs["overlapping"]
    model = tmp_path / "m.joblib"
    result = cli("fit-logreg", train, "--search", "--val-split", "0.25", "--seed", "1", "-o", model)
    assert result.exit_code == 0, result.output
    assert "cv accuracy" in result.output and "validation accuracy" in result.output
    meta = ClassifierModel.load(model).meta
    assert meta["n_train"] == 135 and meta["val"]["n"] == 45
    assert meta["cv"]["folds"] == 5 and len(meta["cv"]["results"]) == 6
    assert meta["params"]["C"] == meta["cv"]["best_params"]["C"]
    info = cli("info", model)
    assert info.exit_code == 0 and "search: best" in info.output and "logreg on fc7" in info.output

    svm = tmp_path / "svm.joblib"
    assert cli("fit-svm", train, "--search", "--kernel", "rbf", "-o", svm).exit_code == 0
    assert ClassifierModel.load(svm).meta["params"]["C"] == ClassifierModel.load(svm).meta["cv"]["best_params"]["C"]


def test_default_output_path_and_layer_choice(cli, tmp_path, blobs):
    train, _ = blobs["separable"]
    result = cli("fit-mlp", train)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sep_train.mlp-fc7.joblib").exists()
    meta = ClassifierModel.load(tmp_path / "sep_train.mlp-fc7.joblib").meta
    assert meta["kind"] == "mlp" and meta["params"]["hidden"] == 256 and meta["best_epochs"] >= 1
    mlp = ClassifierModel.load(tmp_path / "sep_train.mlp-fc7.joblib").pipeline.named_steps["clf"]
    assert mlp.mlp_.coefs_[0].shape == (20, 256) and mlp.mlp_.n_iter_ == meta["best_epochs"]


def test_predict_on_images_equals_predict_on_their_store(cli, tmp_path):
    images = make_class_folder(tmp_path / "imgs", per_class=5)
    store = tmp_path / "feats.h5"
    assert cli("featurize", images, store, "--weights", "none", "--layers", "fc6,fc7", *SMALL).exit_code == 0
    model = tmp_path / "m.joblib"
    assert cli("fit-logreg", store, "--layer", "fc7", "-o", model).exit_code == 0
    from_store, from_images = tmp_path / "store.csv", tmp_path / "images.csv"
    assert cli("predict", model, store, "--out", from_store).exit_code == 0
    result = cli("predict", model, images, "--out", from_images, "-q", "--workers", "0")
    assert result.exit_code == 0, result.output
    rows_store = list(csv.DictReader(from_store.open()))
    rows_images = list(csv.DictReader(from_images.open()))
    assert list(rows_store[0]) == ["path", "prediction", "prob_blue", "prob_red", "error"]
    assert [r["path"] for r in rows_store] == [r["path"] for r in rows_images]
    for a, b in zip(rows_store, rows_images):
        assert a["prediction"] == b["prediction"]
        assert abs(float(a["prob_blue"]) - float(b["prob_blue"])) < 1e-5
    assert {r["prediction"] for r in rows_images} == {"blue", "red"}
    single = cli("predict", model, images / "red" / "red_00.jpg", images / "blue" / "blue_01.png", "-q",
                 "--workers", "0")
    assert single.exit_code == 0 and "red_00.jpg" in single.output and "p(blue)" in single.output


def test_predict_on_images_refuses_other_weights(cli, tmp_path, alexnet_weights):
    images = make_class_folder(tmp_path / "imgs", per_class=3)
    store = tmp_path / "feats.h5"
    assert cli("featurize", images, store, "--weights", alexnet_weights, "--layers", "fc7", *SMALL).exit_code == 0
    model = tmp_path / "m.joblib"
    assert cli("fit-logreg", store, "-o", model).exit_code == 0
    result = cli("predict", model, images, "-q")
    assert result.exit_code == 2 and "pass --weights PATH" in result.output
    other = tmp_path / "other.pth"
    import torch, torchvision
    torch.save(torchvision.models.alexnet().state_dict(), other)
    result = cli("predict", model, images, "--weights", other, "-q")
    assert result.exit_code == 2 and "not the ones the model's features came from" in result.output
    result = cli("predict", model, images, "--weights", alexnet_weights, "-q", "--workers", "0")
    assert result.exit_code == 0, result.output


def test_mismatched_stores_are_clear_errors(cli, blobs, tmp_path):
    train, _ = blobs["separable"]
    model = tmp_path / "m.joblib"
    assert cli("fit-logreg", train, "-o", model).exit_code == 0
    rng = np.random.default_rng(0)
    cases = {
        "other_dim.h5": (dict(X=rng.normal(size=(9, 30))), "dimension 30"),
        "other_layer.h5": (dict(X=rng.normal(size=(9, 20)), layer="fc6"), "no layer 'fc7'"),
        "other_pre.h5": (dict(X=rng.normal(size=(9, 20)), preprocess=json.dumps({"crop": 224, "resize": 256})),
                         "preprocess"),
        "other_model.h5": (dict(X=rng.normal(size=(9, 20)), model="resnet18"), "model='resnet18'"),
    }
    for name, (kwargs, message) in cases.items():
        X = kwargs.pop("X")
        store = make_store(tmp_path / name, X, np.arange(9) % 3, ["a", "b", "c"], **kwargs)
        for command in (("evaluate", model, store), ("predict", model, store)):
            result = cli(*command)
            assert result.exit_code == 2, (name, result.output)
            assert message in result.output and "Traceback" not in result.output


def test_unlabelled_store_and_bad_model_files(cli, blobs, tmp_path):
    train, _ = blobs["separable"]
    model = tmp_path / "m.joblib"
    assert cli("fit-logreg", train, "-o", model).exit_code == 0
    unlabelled = make_store(tmp_path / "u.h5", np.zeros((4, 20)), [-1] * 4, [])
    result = cli("evaluate", model, unlabelled)
    assert result.exit_code == 2 and "has no labels" in result.output
    result = cli("fit-svm", unlabelled)
    assert result.exit_code == 2 and "has no labels" in result.output

    truncated = tmp_path / "truncated.joblib"
    truncated.write_bytes(model.read_bytes()[:200])
    garbage = tmp_path / "garbage.joblib"
    garbage.write_bytes(b"\x00not a model at all")
    for bad in (truncated, garbage, tmp_path / "missing.joblib"):
        result = cli("evaluate", bad, train)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "model" in result.output

    result = cli("fit-logreg", make_store(tmp_path / "two.h5", np.zeros((4, 3)), [0, 0, 0, 0], ["a", "b"]))
    assert result.exit_code == 2 and "fewer than two classes" in result.output
    tiny = make_store(tmp_path / "tiny.h5", np.random.default_rng(0).normal(size=(4, 3)), [0, 0, 1, 1], ["a", "b"])
    result = cli("fit-svm", tiny)
    assert result.exit_code == 2 and "at least 3 training rows" in result.output
    nan = make_store(tmp_path / "nan.h5", np.full((6, 3), np.nan), [0, 0, 0, 1, 1, 1], ["a", "b"])
    result = cli("fit-logreg", nan)
    assert result.exit_code == 2 and "NaN or infinite features in 6 rows" in result.output


def test_multi_layer_store_needs_a_layer(cli, tmp_path):
    images = make_class_folder(tmp_path / "imgs", per_class=3)
    store = tmp_path / "feats.h5"
    assert cli("featurize", images, store, "--weights", "none", "--layers", "fc6,fc7", *SMALL).exit_code == 0
    result = cli("fit-logreg", store)
    assert result.exit_code == 2 and "choose one with --layer" in result.output
    info = cli("info", store)
    assert info.exit_code == 0 and "6 images" in info.output and "layer fc6: dimension 4096" in info.output


def test_other_scikit_learn_version_warns(blobs, tmp_path):
    import joblib

    train, _ = blobs["separable"]
    from alexfeat.classifiers.fit import FitConfig, fit_classifier

    fit_classifier(FitConfig("logreg", train, tmp_path / "m.joblib"))
    data = joblib.load(tmp_path / "m.joblib")
    data["meta"]["versions"]["scikit-learn"] = "0.0.1"
    joblib.dump(data, tmp_path / "old.joblib")
    with pytest.warns(UserWarning, match="scikit-learn 0.0.1"):
        ClassifierModel.load(tmp_path / "old.joblib")


def test_written_files_get_the_usual_permissions(blobs, tmp_path):
    import os
    import stat

    from alexfeat.classifiers.fit import FitConfig, fit_classifier

    umask = os.umask(0o022)
    try:
        fit_classifier(FitConfig("logreg", blobs["separable"][0], tmp_path / "m.joblib"))
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "m.joblib").stat().st_mode) == 0o644


def test_search_ignores_a_class_without_rows(cli, tmp_path):
    rng = np.random.default_rng(0)
    labels = [0] * 10 + [2] * 10  # class "b" has no rows in this store
    X = rng.normal(size=(20, 4)) + np.array(labels)[:, None]
    store = make_store(tmp_path / "gap.h5", X, labels, ["a", "b", "c"])
    result = cli("fit-logreg", store, "--search", "-o", tmp_path / "m.joblib")
    assert result.exit_code == 0, result.output
    assert ClassifierModel.load(tmp_path / "m.joblib").meta["cv"]["folds"] == 5


def test_commands_that_read_only_stores_and_models_never_load_torch(cli, blobs, tmp_path):
    import subprocess
    import sys

    from alexfeat.trainers.config import TrainConfig
    from alexfeat.trainers.run_dir import RunDir

    train, test = blobs["separable"]
    model = tmp_path / "m.joblib"
    assert cli("fit-logreg", train, "-o", model).exit_code == 0
    run = RunDir.create(tmp_path / "run", TrainConfig("scratch", tmp_path, tmp_path, tmp_path / "run", epochs=2))
    run.append_metrics({"epoch": 1, "round": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0,
                        "test_acc": 0.5, "seconds": 1.0})
    for args in (["predict", model, test], ["evaluate", model, test], ["info", test], ["info", model],
                 ["info", run.path], ["plot", run.path, "-o", tmp_path / "c.png"]):
        code = ("import sys; from alexfeat.cli.app import app\n"
                f"app({[str(a) for a in args]!r}, standalone_mode=False)\n"
                "sys.exit(3 if 'torch' in sys.modules else 0)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
