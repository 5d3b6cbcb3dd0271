"""featurize --tta flip: features averaged with the mirror image's, recorded, and followed by predict and serve."""

from __future__ import annotations

import csv

import numpy as np
from PIL import Image, ImageOps

from alexfeat import FeatureStore
from alexfeat.store.provenance import Provenance
from tests.conftest import COLORS, make_image

# Square 72 px PNGs, cropped to 64: the crop is centred exactly, so the mirror of the crop is the crop of the
# mirror, and PNG keeps the mirrored pixels exact.
SMALL = ("--weights", "none", "--layers", "pool5,fc7", "--resize", "72", "--crop", "64", "--workers", "0", "-q")


def _images(root, mirrored=None):
    for c, (name, color) in enumerate(COLORS.items()):
        for i in range(4):
            path = make_image(root / name / f"{name}_{i}.png", color, size=(72, 72), seed=10 * c + i)
            if mirrored is not None:
                target = mirrored / name / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                ImageOps.mirror(Image.open(path)).save(target)
    return root


def test_a_flip_averaged_store_is_the_mean_of_the_image_and_its_mirror(cli, tmp_path):
    images = _images(tmp_path / "images", mirrored=tmp_path / "mirrored")
    plain, mirror, flip = tmp_path / "plain.h5", tmp_path / "mirror.h5", tmp_path / "flip.h5"
    assert cli("featurize", images, plain, *SMALL).exit_code == 0
    assert cli("featurize", tmp_path / "mirrored", mirror, *SMALL).exit_code == 0
    result = cli("featurize", images, flip, "--tta", "flip", *SMALL)
    assert result.exit_code == 0, result.output
    with FeatureStore.open(plain) as a, FeatureStore.open(mirror) as b, FeatureStore.open(flip) as f:
        assert a.paths == b.paths == f.paths
        assert (a.provenance.tta, f.provenance.tta) == ("none", "flip")
        for layer in ("pool5", "fc7"):
            expected = (a.features(layer) + b.features(layer)) / 2
            assert np.allclose(f.features(layer), expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
            assert not np.allclose(a.features(layer), f.features(layer), rtol=1e-3)  # the mirror did change it
    assert "  tta: flip" in cli("info", flip).output and "  tta: none" in cli("info", plain).output


def test_predict_on_images_follows_the_training_store_and_refuses_another_tta(cli, tmp_path):
    images = _images(tmp_path / "images")
    flip, plain = tmp_path / "flip.h5", tmp_path / "plain.h5"
    assert cli("featurize", images, flip, "--tta", "flip", *SMALL).exit_code == 0
    assert cli("featurize", images, plain, *SMALL).exit_code == 0
    model = tmp_path / "m.joblib"
    assert cli("fit-logreg", flip, "--layer", "fc7", "-o", model).exit_code == 0
    assert "test-time augmentation flip" in cli("info", model).output
    # Raw images are featurized as the training store was: flip-averaged, so the same probabilities.
    from_store, from_images = tmp_path / "store.csv", tmp_path / "images.csv"
    assert cli("predict", model, flip, "--out", from_store).exit_code == 0
    result = cli("predict", model, images, "--out", from_images, "-q", "--workers", "0")
    assert result.exit_code == 0, result.output
    a, b = list(csv.DictReader(from_store.open())), list(csv.DictReader(from_images.open()))
    assert max(abs(float(x["prob_blue"]) - float(y["prob_blue"])) for x, y in zip(a, b)) < 1e-5
    same = cli("predict", model, images, "--tta", "flip", "-q", "--workers", "0")
    assert same.exit_code == 0, same.output
    other = cli("predict", model, images, "--tta", "none", "-q", "--workers", "0")
    assert other.exit_code == 2 and "fitted on features made with --tta flip" in other.output
    # A store made without it is another preprocessing, refused like one.
    refused = cli("evaluate", model, plain)
    assert refused.exit_code == 2 and "tta='none' (the model expects 'flip')" in refused.output
    on_store = cli("predict", model, flip, "--tta", "flip")
    assert on_store.exit_code == 2 and "--tta does not apply to a feature store" in on_store.output

    from alexfeat.serve.config import ServeConfig
    from alexfeat.serve.model import load_served_model

    served = load_served_model(ServeConfig(model_path=model, device="cpu"))
    assert served.featurizer.tta == "flip" and served.describe()["tta"] == "flip"


def test_stores_and_models_older_than_tta_read_as_none(cli, tmp_path):
    old = Provenance.from_attrs({"model": "alexnet", "weights": "none(seed=0)"})
    assert old.tta == "none"
    record = {k: v for k, v in old.feature_settings().items() if k != "tta"}  # a model file written before --tta
    assert old.differences(record) == []
    assert Provenance(model="alexnet", weights="none(seed=0)", tta="flip").differences(record) == [
        "tta='flip' (the model expects 'none')"]


def test_parts_written_with_another_tta_are_not_kept(cli, tmp_path):
    images = _images(tmp_path / "images")
    parts = tmp_path / "parts"
    assert cli("featurize", images, "--parts", parts, "--tta", "flip", *SMALL).exit_code == 0
    again = cli("featurize", images, "--parts", parts, *SMALL)
    assert again.exit_code == 2 and "written with --tta flip, this run none" in again.output
