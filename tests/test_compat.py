"""Files an earlier alexfeat wrote still load, and give the same predictions.

``tests/data/compat`` holds a store, a parts folder, three fit-* models and a trainer checkpoint written
by main at 03ba3a9 (before issue 19 moved the modules: the joblib files pickle class paths), and what that
version predicted from them (``make.sh`` wrote it all).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data" / "compat"


def read_predictions(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    probs = np.array([[float(v) for k, v in row.items() if k.startswith("prob_")] for row in rows])
    return [r["path"] for r in rows], [r["prediction"] for r in rows], probs


@pytest.mark.parametrize("model,data,expected", [
    ("models/logreg.joblib", "store.h5", "logreg-store"),
    ("models/svm.joblib", "store.h5", "svm-store"),
    ("models/mlp.joblib", "store.h5", "mlp-store"),
    ("models/mlp.joblib", "parts", "mlp-parts"),
    ("models/logreg.joblib", "images", "logreg-images"),
    ("models/svm.joblib", "images", "svm-images"),
    ("models/mlp.joblib", "images", "mlp-images"),
    ("run/best.pt", "images", "checkpoint-images"),
])
def test_old_files_predict_as_before(cli, tmp_path, model, data, expected):
    out = tmp_path / "predictions.csv"
    result = cli("predict", DATA / model, DATA / data, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    paths, labels, probs = read_predictions(out)
    old_paths, old_labels, old_probs = read_predictions(DATA / "expected" / f"{expected}.csv")
    assert (paths, labels) == (old_paths, old_labels)
    np.testing.assert_allclose(probs, old_probs, atol=2e-5)


@pytest.mark.parametrize("path,says", [
    ("store.h5", "feature store"), ("parts", "folder of 3 part stores"), ("models/mlp.joblib", "classifier"),
    ("run/best.pt", "checkpoint"), ("run", "scratch run"),
])
def test_info_reads_old_files(cli, path, says):
    result = cli("info", DATA / path)
    assert result.exit_code == 0, result.output
    assert says in result.output


def test_old_parts_merge_and_evaluate(cli, tmp_path):
    parts = shutil.copytree(DATA / "parts", tmp_path / "parts")
    merged = tmp_path / "merged.h5"
    assert cli("merge", parts, merged).exit_code == 0
    result = cli("evaluate", DATA / "models" / "mlp.joblib", merged)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
