"""Does bf16 cost accuracy? fit-logreg on fp32 features against fit-logreg on bf16 features.

The pretrained EfficientNet-Lite0 of ../shared/weights featurizes ../shared/data/dogs-vs-cats (train: 2000
photos, test: 800) once in fp32 and once in bf16 (--precision), both on this CPU in the same run; a
logistic regression (alexfeat fit-logreg, its defaults) is fitted on each train store and scored on the
test store of the same precision. Prints the CPU, both test accuracies, their difference (target: within
0.3 points), the features' cosine similarity (per image, bf16 against fp32), and the accuracy of the fp32
model on the bf16 test features (what predict on images does when the precisions differ).

    python bench/precision_accuracy.py            # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from alexfeat.classifiers.evaluate import evaluate_store  # noqa: E402
from alexfeat.classifiers.fit import FitConfig, fit_classifier  # noqa: E402
from alexfeat.classifiers.model_file import ClassifierModel  # noqa: E402
from alexfeat.featurizer.device import cpu_bf16  # noqa: E402
from alexfeat.featurizer.featurize import featurize  # noqa: E402
from alexfeat.featurizer.run import FeaturizeConfig  # noqa: E402
from alexfeat.store.reader import FeatureStore  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


def features(store: Path) -> tuple[list[str], np.ndarray]:
    with FeatureStore.open(store) as s:
        return s.paths, s.features(s.layers[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "dogs-vs-cats")
    parser.add_argument("--weights", type=Path, default=SHARED / "weights" / "efficientnet_lite0_imagenet_timm.pth")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, native bf16: {cpu_bf16() or 'no (emulated)'}")
    accuracy, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for precision in ("fp32", "bf16"):
            started = time.perf_counter()
            for split in ("train", "test"):
                featurize(FeaturizeConfig(images=args.data / split, out=tmp / f"{split}-{precision}.h5",
                                          model="timm:efficientnet_lite0", weights=str(args.weights),
                                          precision=precision, quiet=True, download=False))
            seconds[precision] = time.perf_counter() - started
            fit_classifier(FitConfig(kind="logreg", store=tmp / f"train-{precision}.h5",
                                     out=tmp / f"logreg-{precision}.joblib"))
            report = evaluate_store(tmp / f"logreg-{precision}.joblib", tmp / f"test-{precision}.h5")
            accuracy[precision] = 100 * report.accuracy
            print(f"{precision}: featurized {report.n} test + train photos in {seconds[precision]:.0f} s; "
                  f"fit-logreg test accuracy {accuracy[precision]:.2f}% (n={report.n})")
        keys32, x32 = features(tmp / "test-fp32.h5")
        keys16, x16 = features(tmp / "test-bf16.h5")
        assert keys32 == keys16
        cosine = (x32 * x16).sum(1) / (np.linalg.norm(x32, axis=1) * np.linalg.norm(x16, axis=1))
        model = ClassifierModel.load(tmp / "logreg-fp32.joblib")
        y = np.array(model.predict(x32)), np.array(model.predict(x16))
        crossed = 100 * float(np.mean(y[0] == y[1]))
        mixed = evaluate_store(tmp / "logreg-fp32.joblib", tmp / "test-bf16.h5")
    diff = accuracy["bf16"] - accuracy["fp32"]
    print(f"bf16 - fp32 test accuracy: {diff:+.2f} points (target: within 0.3) -> "
          f"{'PASS' if abs(diff) <= 0.3 else 'FAIL'}")
    print(f"test features, bf16 vs fp32 cosine similarity: min {cosine.min():.4f}, median {np.median(cosine):.4f}")
    print(f"the fp32 model on bf16 test features: accuracy {100 * mixed.accuracy:.2f}% "
          f"({100 * mixed.accuracy - accuracy['fp32']:+.2f} points), same class as on fp32 features for "
          f"{crossed:.2f}% of the photos")
    print(f"featurize time (train + test, this run): fp32 {seconds['fp32']:.0f} s, bf16 {seconds['bf16']:.0f} s "
          f"({seconds['fp32'] / seconds['bf16']:.2f}x)")


if __name__ == "__main__":
    main()
