#!/usr/bin/env bash
# Writes the compatibility fixtures that tests/test_compat.py reads: files made by alexfeat at main
# 03ba3a9 (before the layout change of issue 19), and what that version predicted from them.
# Run from this folder with that version's venv first on PATH; the files are committed, so the test
# checks that today's code reads yesterday's files and gives the same predictions.
set -euo pipefail
rm -rf images store.h5 parts run models expected
python - <<'PY'
import numpy as np
from PIL import Image
from pathlib import Path
rng = np.random.default_rng(0)
for c, (name, tint) in enumerate((("bright", 170), ("dark", 60))):
    folder = Path("images") / name
    folder.mkdir(parents=True)
    for i in range(6):
        pixels = np.clip(rng.normal(tint, 40, (36, 36, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
PY
common=(--weights none --layers conv5,fc7 --pool avg --resize 72 --crop 64 --dtype float16 -q)
alexfeat featurize images store.h5 "${common[@]}"
alexfeat featurize images --parts parts --part-size 5 "${common[@]}"
mkdir -p models expected
alexfeat fit-logreg store.h5 --layer fc7 -o models/logreg.joblib
alexfeat fit-svm store.h5 --layer conv5 -o models/svm.joblib
alexfeat fit-mlp parts --layer conv5 -o models/mlp.joblib
alexfeat train-scratch images --test-dir images -o run --width-mult 0.0625 --image-size 64 --epochs 1 --batch-size 4 --workers 0 -q
rm -f run/last.pt run/curves.png
for m in logreg svm mlp; do
  alexfeat predict models/$m.joblib images --out expected/$m-images.csv -q
  alexfeat predict models/$m.joblib store.h5 --out expected/$m-store.csv -q
done
alexfeat predict models/mlp.joblib parts --out expected/mlp-parts.csv -q
alexfeat predict run/best.pt images --out expected/checkpoint-images.csv -q
