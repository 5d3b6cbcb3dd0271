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


def test_an_old_runs_auto_precision_resumes_in_the_precision_it_started_in(tmp_path):
    from alexfeat.trainers.config import TrainConfig

    text = (DATA / "run" / "config.json").read_text()
    assert '"precision": "auto"' in text  # then: bf16 on CUDA, fp32 on the CPU, which is today's default
    assert TrainConfig.from_json(text).precision is None
    # A run written now that asked for auto keeps it.
    assert TrainConfig.from_json(TrainConfig.from_json(text, precision="auto").to_json()).precision == "auto"


def test_a_checkpoint_reads_every_source_a_model_does(cli, tmp_path):
    folder, pattern = tmp_path / "folder.csv", tmp_path / "pattern.csv"
    assert cli("predict", DATA / "run" / "best.pt", DATA / "images", "--out", folder, "-q").exit_code == 0
    result = cli("predict", DATA / "run" / "best.pt", f"{DATA / 'images'}/*/*.png", "--out", pattern, "-q")
    assert result.exit_code == 0, result.output
    (folder_paths, folder_labels, _), (pattern_paths, pattern_labels, _) = map(read_predictions, (folder, pattern))
    named = [[Path(p).parent.name + "/" + Path(p).name for p in paths] for paths in (folder_paths, pattern_paths)]
    assert len(folder_labels) > 0
    assert sorted(zip(named[1], pattern_labels)) == sorted(zip(named[0], folder_labels))
