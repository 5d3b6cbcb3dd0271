"""alexfeat probe: which layer of a store transfers best; fit-* on several layers side by side."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from alexfeat.classifiers.model_file import ClassifierModel
from alexfeat.classifiers.probe import ProbeConfig, probe
from alexfeat.errors import AlexfeatError
from tests.conftest import make_class_folder, make_store

SMALL = ("--resize", "72", "--crop", "64", "--workers", "0", "-q")


def _layers(n: int = 120, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Three layers of one labelled set: noise, a weak signal and a strong one (the known best)."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    sign = np.where(y == 1, 1.0, -1.0)[:, None]
    noise = rng.normal(size=(n, 16))
    weak = rng.normal(size=(n, 12)) + 0.25 * sign
    strong = rng.normal(size=(n, 8)) + 1.5 * sign
    return {"conv": noise, "fc6": weak, "fc7": strong}, y


@pytest.fixture
def layered(tmp_path):
    X, y = _layers()
    test_X, test_y = _layers(60, seed=1)
    return (make_store(tmp_path / "train.h5", X, y, ["cat", "dog"]),
            make_store(tmp_path / "test.h5", test_X, test_y, ["cat", "dog"]))


def test_probe_finds_the_layer_that_separates_the_classes(cli, layered, tmp_path):
    train, test = layered
    report, figure = tmp_path / "probe.json", tmp_path / "probe.png"
    result = cli("probe", train, "--classifier", "logreg,svm,svm-rbf", "--test", test, "--report", report,
                 "--plot", figure)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["layer", "dim", "classifier"]
    assert len([line for line in lines if line.split()[:1] in (["conv"], ["fc6"], ["fc7"])]) == 9
    assert "best (*): " in result.output and "on fc7; fit it with: alexfeat fit-" in result.output
    data = json.loads(report.read_text())
    assert data["best"]["layer"] == "fc7" and data["rows"] == 120 and data["sample_reason"] == ""
    by = {(r["layer"], r["classifier"]): r for r in data["results"]}
    assert by[("fc7", "logreg")]["mean"] > 0.9 > by[("conv", "logreg")]["mean"]
    assert by[("fc7", "svm")]["dim"] == 8 and len(by[("fc7", "svm")]["folds"]) == 5
    assert by[("fc7", "logreg")]["test_accuracy"] > 0.9 and by[("fc7", "svm-rbf")]["mean"] > 0.9
    best = data["best"]["classifier"]
    assert f"fit it with: alexfeat fit-{best.split('-')[0]} {train} --layer fc7" in result.output
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = cli("probe", train, "--report", report)
    assert again.exit_code == 2 and "exists: pass --overwrite" in again.output


def test_probe_of_layers_side_by_side(layered):
    train, _ = layered
    result = probe(ProbeConfig(train, layers=("fc6", "fc6+fc7"), folds=3))
    assert [(r.layer, r.dim) for r in result.results] == [("fc6", 12), ("fc6+fc7", 20)]
    assert result.best.layer == "fc6+fc7"
    with pytest.raises(AlexfeatError, match="has no layer 'fc8'"):
        probe(ProbeConfig(train, layers=("fc7+fc8",)))


def test_probe_max_rows_says_it_sampled(cli, layered, tmp_path):
    train, _ = layered
    result = cli("probe", train, "--layers", "fc7", "--max-rows", "40", "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert "a stratified sample of 40 of 120 rows (--max-rows 40)" in result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["rows"] == 40 and data["total"] == 120
    # A memory limit a layer does not fit samples too, and says why.
    limited = probe(ProbeConfig(train, layers=("fc7",), memory_limit=8 * 4 * 50))
    assert limited.rows == 50 and "exceed the memory limit" in limited.summary()
    tiny = cli("probe", train, "--max-rows", "6", "--report", tmp_path / "t.json")
    assert tiny.exit_code == 2 and "fewer than --folds 5" in tiny.output


def test_probe_refuses_a_test_store_made_otherwise(cli, layered, tmp_path):
    train, _ = layered
    X, y = _layers(20)
    other = make_store(tmp_path / "other.h5", X, y, ["cat", "dog"], weights="none(seed=7)")
    result = cli("probe", train, "--test", other, "--plot", tmp_path / "p.png")
    assert result.exit_code == 2 and "other settings" in result.output and "seed=7" in result.output
    assert not (tmp_path / "p.png").exists()
    bad = cli("probe", train, "--classifier", "knn", "--report", tmp_path / "r.json")
    assert bad.exit_code == 2 and "unknown --classifier 'knn'" in bad.output


def test_probe_never_loads_torch(layered, tmp_path):
    train, test = layered
    args = ["probe", str(train), "--test", str(test), "--classifier", "logreg,svm", "--plot", str(tmp_path / "p.png")]
    code = ("import sys; from alexfeat.cli.app import app\n"
            f"app({args!r}, standalone_mode=False)\n"
            "sys.exit(3 if 'torch' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout, done.stderr)


def test_fit_on_two_layers_scales_each_and_predicts_images(cli, tmp_path):
    images = make_class_folder(tmp_path / "imgs", per_class=5)
    store = tmp_path / "feats.h5"
    assert cli("featurize", images, store, "--weights", "none", "--layers", "fc6,fc7", *SMALL).exit_code == 0
    model_path = tmp_path / "m.joblib"
    result = cli("fit-logreg", store, "--layer", "fc6,fc7", "--scale", "l2", "-o", model_path)
    assert result.exit_code == 0, result.output
    assert "of fc6+fc7" in result.output
    model = ClassifierModel.load(model_path)
    assert model.layers == ("fc6", "fc7") and model.meta["dims"] == {"fc6": 4096, "fc7": 4096}
    assert model.meta["dim"] == 8192
    # Each layer normalised on its own: both halves of a scaled row have unit length.
    scaled = model.pipeline.named_steps["scale"].transform(np.ones((1, 8192), dtype=np.float32))
    assert np.allclose([np.linalg.norm(scaled[0, :4096]), np.linalg.norm(scaled[0, 4096:])], 1.0)
    info = cli("info", model_path)
    assert "on fc6+fc7 (8192 dims" in info.output
    from_store, from_images = tmp_path / "store.csv", tmp_path / "images.csv"
    assert cli("predict", model_path, store, "--out", from_store).exit_code == 0
    result = cli("predict", model_path, images, "--out", from_images, "-q", "--workers", "0")
    assert result.exit_code == 0, result.output
    rows_store, rows_images = list(csv.DictReader(from_store.open())), list(csv.DictReader(from_images.open()))
    assert [r["prediction"] for r in rows_store] == [r["prediction"] for r in rows_images]
    assert max(abs(float(a["prob_blue"]) - float(b["prob_blue"])) for a, b in zip(rows_store, rows_images)) < 1e-5
    evaluated = cli("evaluate", model_path, store)
    assert evaluated.exit_code == 0 and "accuracy 1.0000" in evaluated.output
    # The server computes both layers too, and scores as predict does.
    from alexfeat.serve.config import ServeConfig
    from alexfeat.serve.model import load_served_model

    served = load_served_model(ServeConfig(model_path=model_path, device="cpu"))
    assert set(served.describe()["layers"]) == {"fc6", "fc7"}
    first = rows_images[0]
    result = served.run([served.decode((images / first["path"]).read_bytes())])[0]
    assert abs(float(result.scores[0]) - float(first["prob_blue"])) < 1e-5


def test_a_two_layer_model_refuses_a_store_without_one_of_them(cli, layered, tmp_path):
    train, _ = layered
    model = tmp_path / "m.joblib"
    assert cli("fit-svm", train, "--layer", "fc6+fc7", "-o", model).exit_code == 0
    X, y = _layers(20)
    one = make_store(tmp_path / "one.h5", X["fc7"], y, ["cat", "dog"], layer="fc7")
    result = cli("predict", model, one)
    assert result.exit_code == 2 and "has no layer 'fc6'" in result.output
    twice = cli("fit-logreg", train, "--layer", "fc7,fc7", "-o", tmp_path / "t.joblib")
    assert twice.exit_code == 2 and "names a layer twice" in twice.output
