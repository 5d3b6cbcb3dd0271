"""A user fits classifiers on stores larger than memory: streaming fits, chunked evaluate and predict."""

from __future__ import annotations

import json

import pytest

from alexfeat.classifiers.model_file import ClassifierModel


def accuracy(cli, model, store) -> float:
    result = cli("evaluate", model, store, "--report", model.with_suffix(".json"), "--overwrite")
    assert result.exit_code == 0, result.output
    return json.loads(model.with_suffix(".json").read_text())["accuracy"]


@pytest.mark.parametrize("command, extra", [
    ("fit-logreg", ()), ("fit-svm", ()), ("fit-svm", ("--kernel", "rbf")), ("fit-mlp", ("--hidden", "32")),
    ("fit-logreg", ("--pca", "5")),
])
def test_streaming_fit_matches_the_in_memory_fit(cli, blobs, tmp_path, command, extra):
    train, test = blobs["separable"]
    memory, streamed = tmp_path / "memory.joblib", tmp_path / "streamed.joblib"
    if "--pca" not in extra:
        assert cli(command, train, *extra, "-o", memory).exit_code == 0
    result = cli(command, train, *extra, "--streaming", "-o", streamed)
    assert result.exit_code == 0, result.output
    assert "streamed over row chunks (--streaming)" in result.output
    model = ClassifierModel.load(streamed)
    assert model.meta["streaming"]["holdout_rows"] > 0 and model.meta["best_epochs"] >= 1
    assert accuracy(cli, streamed, test) >= 0.95
    if "--pca" not in extra:
        assert accuracy(cli, streamed, test) >= accuracy(cli, memory, test) - 0.02
    probs = cli("predict", streamed, test, "-o", tmp_path / "p.csv")
    assert probs.exit_code == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 61 and all(abs(sum(map(float, r.split(",")[2:-1])) - 1) < 1e-5 for r in rows[1:])
    assert "streaming fit (--streaming)" in cli("info", streamed).output


def test_fit_streams_by_itself_past_the_memory_limit_and_says_so(cli, blobs, tmp_path):
    train, _ = blobs["separable"]
    result = cli("fit-logreg", train, "--memory-limit", "0.00001", "-o", tmp_path / "m.joblib")
    assert result.exit_code == 0
    assert "streamed over row chunks (the features need 0.00 GB, over the memory limit of 0.00 GB)" in result.output
    result = cli("fit-logreg", train, "--memory-limit", "0.00001", "--search", "-o", tmp_path / "m2.joblib")
    assert result.exit_code == 2 and "--search needs the features in memory" in result.output


def test_evaluate_and_predict_read_one_chunk_at_a_time(cli, blobs, tmp_path, monkeypatch):
    from alexfeat.classifiers import streaming
    from alexfeat.store.reader import FeatureStore

    train, test = blobs["overlapping"]
    assert cli("fit-logreg", train, "-o", tmp_path / "m.joblib").exit_code == 0
    whole = accuracy(cli, tmp_path / "m.joblib", test)
    seen = []
    original = FeatureStore.iter_rows

    def recording(self, layer, chunk=4096):
        for block in original(self, layer, chunk):
            seen.append(len(block))
            yield block

    monkeypatch.setattr(streaming, "chunk_rows", lambda dim: 16)
    monkeypatch.setattr(FeatureStore, "iter_rows", recording)
    assert accuracy(cli, tmp_path / "m.joblib", test) == whole
    assert max(seen) == 16 and sum(seen) == 60
