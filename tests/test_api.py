"""A user calls alexfeat from Python: the public names, evaluate and predict, and errors in Python's words."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import alexfeat
from alexfeat import AlexfeatError

FAST = dict(resize=72, crop=64, layers=("fc7",), workers=0)


def test_dir_lists_the_public_api_and_evaluate_and_predict_work_on_a_store(blobs, tmp_path):
    assert dir(alexfeat) == ["AlexfeatError", "ClassifierModel", "FeatureStore", "__version__", "evaluate",
                             "featurize", "fit", "load_model", "predict"]
    train, test = blobs["separable"]
    alexfeat.fit("logreg", train, out=tmp_path / "m.joblib")
    report = alexfeat.evaluate(tmp_path / "m.joblib", test)
    assert report.n == 60 and report.accuracy > 0.9
    predictions = alexfeat.predict(str(tmp_path / "m.joblib"), test)
    assert len(predictions.paths) == 60 and set(predictions.predicted) <= {"a", "b", "c"}
    # Reading stores and models through the API loads no torch.
    code = (f"import sys, alexfeat; alexfeat.evaluate({str(tmp_path / 'm.joblib')!r}, {str(test)!r}); "
            f"alexfeat.predict({str(tmp_path / 'm.joblib')!r}, [{str(test)!r}]); print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_errors_through_the_api_name_parameters_not_flags(images_dir, alexnet_weights, tmp_path, blobs):
    from alexfeat.api import _in_python_terms

    out = tmp_path / "f.h5"
    alexfeat.featurize(images_dir, out, weights=str(alexnet_weights), **FAST)
    with pytest.raises(AlexfeatError, match=r"pass overwrite=True to replace it"):
        alexfeat.featurize(images_dir, out, weights=str(alexnet_weights), **FAST)
    with pytest.raises(AlexfeatError, match=r"weights file .*nope.pth does not exist \(use weights=\"imagenet\""):
        alexfeat.featurize(images_dir, out, weights=str(tmp_path / "nope.pth"), overwrite=True, **FAST)
    with pytest.raises(AlexfeatError, match="overwrite=True and resume=True exclude each other"):
        alexfeat.featurize(images_dir, out, weights=str(alexnet_weights), overwrite=True, resume=True, **FAST)
    with pytest.raises(AlexfeatError) as error:
        alexfeat.fit("svm", blobs["separable"][0], kernel="poly")
    assert "--" not in str(error.value)
    assert _in_python_terms("pass --weights PATH, or --engine ray with --part-size 10000; --val-split must be "
                            "in [0, 1); --classes FILE", frozenset()) == \
        'pass weights=PATH, or engine="ray" with part_size=10000; val_split must be in [0, 1); classes_file=FILE'
    assert _in_python_terms("unknown layer (alexfeat layers --model X --all lists them)", frozenset()) == \
        "unknown layer (alexfeat layers --model X --all lists them)"  # a command line quoted whole stays one


def test_mean_as_a_string_is_refused_as_a_string(images_dir, alexnet_weights, tmp_path):
    with pytest.raises(AlexfeatError, match=r"mean takes 3 numbers, one per channel, not the string '0.5,0.5,0.5'"):
        alexfeat.featurize(images_dir, tmp_path / "f.h5", weights=str(alexnet_weights), mean="0.5,0.5,0.5", **FAST)
    assert list(tmp_path.glob("f.h5*")) == []


def test_timm_file_weights_take_the_named_tags_preprocessing_and_say_where_it_came_from(images_dir, tmp_path):
    timm = pytest.importorskip("timm")
    from alexfeat.featurizer.models import load_by_name

    weights = tmp_path / "b0.pth"
    torch.save(timm.create_model("efficientnet_b0", pretrained=False).state_dict(), weights)
    tagged = load_by_name("timm:efficientnet_b0.ra4_e3600_r224_in1k", str(weights))
    assert (tagged.preprocess.resize, tagged.preprocess.mean) == (248, (0.5, 0.5, 0.5))  # that tag's, not the default
    untagged = load_by_name("timm:efficientnet_b0", str(weights))
    default_tag = untagged.net.pretrained_cfg["tag"]
    assert untagged.preprocess.mean == timm.models.get_pretrained_cfg(f"efficientnet_b0.{default_tag}").mean
    result = alexfeat.featurize(images_dir, tmp_path / "f.h5", model="timm:efficientnet_b0", weights=str(weights),
                                crop=64, resize=72, workers=0)
    mean = ",".join(f"{v:g}" for v in untagged.preprocess.mean)
    assert (f"mean {mean}, std " in result.summary() and
            f"from timm's config of efficientnet_b0.{default_tag}, its default tag" in result.summary())
    assert "b0.pth records none" in result.summary()
