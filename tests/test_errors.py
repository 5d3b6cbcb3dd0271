"""Mistakes a user makes on day one: each is one or two lines saying what is wrong and what to do, exit 2."""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import torch

from tests.conftest import make_image, make_store


def _short_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert 1 <= len(lines) <= 2 and "Traceback" not in result.output, result.output
    for word in words:
        assert word in result.output, result.output


def test_a_file_that_is_not_weights_is_two_lines_not_torchs_page(cli, tmp_path):
    pickled = tmp_path / "pickled.pt"
    torch.save({"args": argparse.Namespace(lr=0.1), "w": torch.zeros(2)}, pickled)
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    _short_error(cli("info", pickled), "argparse.Namespace", "torch.save(model.state_dict(), PATH)")
    _short_error(cli("info", text), "is not a PyTorch state dict", "torch could not read it")
    make_image(tmp_path / "imgs" / "a.png", (10, 20, 30))
    _short_error(cli("featurize", tmp_path / "imgs", tmp_path / "o.h5", "--weights", pickled, "-q"),
                 "holds Python objects besides tensors")


def test_fit_mlp_search_on_a_tiny_store_says_how_many_rows_it_needs(cli, tmp_path):
    rng = np.random.default_rng(0)
    tiny = make_store(tmp_path / "tiny.h5", rng.normal(size=(8, 5)), [0] * 4 + [1] * 4, ["a", "b"])
    _short_error(cli("fit-mlp", tiny, "--search"), "fit-mlp needs at least", "(8 given)", "fit-logreg")
    _short_error(cli("fit-mlp", tiny), "fit-mlp needs at least 11 labelled rows")
    enough = make_store(tmp_path / "enough.h5", rng.normal(size=(14, 5)) + np.repeat([[0], [3]], 7, axis=0),
                        [0] * 7 + [1] * 7, ["a", "b"])
    result = cli("fit-mlp", enough, "--search", "--max-epochs", "5")
    assert result.exit_code == 0, result.output


def test_evaluate_with_a_plain_state_dict_names_the_real_mistake(cli, tmp_path, alexnet_weights):
    make_image(tmp_path / "flat" / "a.png", (10, 20, 30))  # no class folders either: not the mistake to report
    _short_error(cli("evaluate", alexnet_weights, tmp_path / "flat"), "plain state dict without class names")


def test_a_settings_mismatch_names_only_the_keys_that_differ(cli, blobs, tmp_path):
    train, _ = blobs["separable"]
    model = tmp_path / "m.joblib"
    assert cli("fit-logreg", train, "-o", model).exit_code == 0
    other = make_store(tmp_path / "other.h5", np.zeros((3, 20)), [0, 1, 2], ["a", "b", "c"],
                       preprocess=json.dumps({"crop": 224, "resize": 72}))
    result = cli("evaluate", model, other)
    _short_error(result, "preprocess.crop=224 (the model expects 64)")
    assert "resize" not in result.output and "{" not in result.output


def test_library_warnings_are_summarised_in_one_line(cli, blobs, tmp_path, monkeypatch):
    from sklearn.exceptions import ConvergenceWarning

    import alexfeat.classifiers.fit as fit

    original = fit._fit_or_search

    def noisy(*args, **kwargs):
        for i in range(3):
            warnings.warn(f"lbfgs failed to converge after {i} iterations.\nIncrease the number of iterations "
                          f"(max_iter) or scale the data.", ConvergenceWarning)
        warnings.warn("'penalty' was deprecated in version 1.8 and will be removed in 1.10.", FutureWarning)
        return original(*args, **kwargs)

    monkeypatch.setattr(fit, "_fit_or_search", noisy)
    result = cli("fit-logreg", blobs["separable"][0], "-o", tmp_path / "m.joblib")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("fitted logreg"), result.output
    assert lines[1].startswith("warning: 4 library warning(s): ConvergenceWarning")
    assert "ConvergenceWarning x3 (lbfgs failed to converge after 0 iterations.)" in lines[1]
    assert "FutureWarning ('penalty' was deprecated" in lines[1] and "Increase" not in lines[1]
