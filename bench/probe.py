"""alexfeat probe and featurize --tta flip, measured.

``dogs`` (the default): the ../shared EfficientNet-Lite0 on ../shared/data/dogs-vs-cats. Featurizes train/ and
test/ plainly (the baseline) and with --tta flip (the cost), probes both training stores on two layers and the
two side by side x logreg, svm, svm-rbf, mlp (5 folds; each also scored on the test store, never used to choose),
picks the best setting by cross-validation on train/ only, fits it with fit-* and evaluates it on test/, and
draws the probe as a figure.

``large``: a synthetic store of 250k rows x 4 layers, probed with --max-rows in a child process; its peak
resident memory and time beside those of two light commands on the same store (info, and fit-logreg on one
layer, with --fit-baseline), each in its own process.

    nice -n 10 python bench/probe.py dogs --plot docs/probe.png      # ~10 minutes on 2 busy cores
    nice -n 10 python bench/probe.py large
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "efficientnet_lite0_imagenet_timm.pth"
DATA = SHARED / "data" / "dogs-vs-cats"
LAYERS = ("pre_logits", "logits")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0]
    return (f"machine: {cpu}, {os.cpu_count()} CPUs, load average {load:.1f} (shared with other work: timings are "
            f"pessimistic)")


def featurize_config(images, out: Path, tta: str):
    from alexfeat.featurizer.featurize import FeaturizeConfig

    # The model's own preprocessing (../shared/README.md): resize 256, crop 224, mean = std = 0.5.
    return FeaturizeConfig(images=images, out=out, model="timm:efficientnet_lite0", weights=str(WEIGHTS),
                           layers=LAYERS, tta=tta, resize=256, crop=224, mean=(0.5,) * 3, std=(0.5,) * 3, quiet=True,
                           overwrite=True)


def tta_cost(folder: Path, images: int) -> None:
    """featurize of ``images`` photos of train/, plainly and with --tta flip, alternated three times (on a shared
    machine the load changes: the median of each is compared)."""
    from alexfeat.featurizer.featurize import featurize

    per_class = images // 2
    listing = folder / "subset.txt"
    listing.write_text("".join(f"{DATA / 'train' / c / f'{c[:-1]}.{i}.jpg'}\n" for c in ("cats", "dogs")
                               for i in range(1, per_class + 1)))
    seconds = {"none": [], "flip": []}
    for _ in range(3):
        for tta in ("none", "flip"):
            seconds[tta].append(featurize(featurize_config(listing, folder / f"subset_{tta}.h5", tta)).seconds)
    plain, flip = np.median(seconds["none"]), np.median(seconds["flip"])
    print(f"featurize {2 * per_class} photos (network load included): plain {plain:.1f} s "
          f"({2 * per_class / plain:.1f} images/s), --tta flip {flip:.1f} s ({2 * per_class / flip:.1f} images/s): "
          f"{flip / plain:.2f}x the time (runs: plain {', '.join(f'{x:.1f}' for x in seconds['none'])} s, "
          f"flip {', '.join(f'{x:.1f}' for x in seconds['flip'])} s)")


def featurize_stores(folder: Path) -> None:
    """train/ and test/, plain and flip-averaged, into folder/{train,test}[_flip].h5 (kept when there)."""
    from alexfeat.featurizer.featurize import featurize

    for tta in ("none", "flip"):
        for split in ("train", "test"):
            out = folder / f"{split}{'_flip' if tta == 'flip' else ''}.h5"
            if out.exists():
                print(f"{out}: reused")
                continue
            result = featurize(featurize_config(DATA / split, out, tta))
            print(f"{out}: {result.summary()}")


def augment_measurement(folder: Path, kinds: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """Test accuracy on pre_logits of training on flip-averaged rows vs on both views as rows (what
    --augment flip would store). The mirror image's features are 2 x flip - plain: the mean is linear."""
    from alexfeat.classifiers.data import read_features
    from alexfeat.classifiers.probe import ProbeConfig, fit_config
    from alexfeat.classifiers.fit import build_pipeline
    from alexfeat.store.reader import FeatureStore

    layer = LAYERS[0]
    stores = {name: FeatureStore.open(folder / f"{name}.h5") for name in ("train", "train_flip", "test_flip")}
    try:
        plain, flip = read_features(stores["train"], layer), read_features(stores["train_flip"], layer)
        y, test, test_y = stores["train"].labels, read_features(stores["test_flip"], layer), stores["test_flip"].labels
    finally:
        for store in stores.values():
            store.close()
    both, both_y = np.concatenate([plain, 2 * flip - plain]), np.concatenate([y, y])
    out = {}
    for kind in kinds:
        config = fit_config(kind, ProbeConfig(folder))
        averaged = (build_pipeline(config).fit(flip, y).predict(test) == test_y).mean()
        views = (build_pipeline(config).fit(both, both_y).predict(test) == test_y).mean()
        out[kind] = (float(averaged), float(views))
    return out


def dogs(args: argparse.Namespace) -> None:
    from alexfeat.classifiers.evaluate import evaluate_store
    from alexfeat.classifiers.fit import fit_classifier
    from alexfeat.classifiers.probe import ProbeConfig, ProbeResult, fit_config, plot_probe, probe

    if not WEIGHTS.exists() or not DATA.exists():
        sys.exit(f"needs {WEIGHTS} and {DATA}")
    folder = args.dir or Path(tempfile.mkdtemp(prefix="bench_probe_"))
    folder.mkdir(parents=True, exist_ok=True)
    print(machine())
    if args.tta_images:
        tta_cost(folder, args.tta_images)
    featurize_stores(folder)
    stores = {setting: (folder / f"train{suffix}.h5", folder / f"test{suffix}.h5")
              for setting, suffix in (("plain", ""), ("flip", "_flip"))}
    # The target: 2000 photos x 2 layers x 3 classifiers, 5 folds; logreg and svm timed apart from the MLP.
    train, test = stores["plain"]
    started = time.perf_counter()
    probe(ProbeConfig(train, layers=LAYERS, classifiers=("logreg", "svm"), folds=5))
    print(f"probe of 2000 rows x {len(LAYERS)} layers x logreg,svm, 5 folds: {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    probe(ProbeConfig(train, layers=LAYERS, classifiers=("mlp",), folds=5))
    print(f"probe of 2000 rows x {len(LAYERS)} layers x mlp, 5 folds: {time.perf_counter() - started:.1f} s")
    # The choice: every setting x every classifier, by cross-validation on train/ only.
    groups = (*LAYERS, "+".join(LAYERS))
    results = {setting: probe(ProbeConfig(train, layers=groups, classifiers=("logreg", "svm", "svm-rbf", "mlp"),
                                          folds=5, test=test))
               for setting, (train, test) in stores.items()}
    rows = [replace(r, layer=r.layer + (" flip" if setting == "flip" else ""))
            for setting, result in results.items() for r in result.results]
    both = ProbeResult("dogs-vs-cats train (efficientnet_lite0)", results["plain"].rows, results["plain"].total, "",
                       5, sum(r.seconds for r in results.values()), rows, "test/", results["plain"].test_rows)
    print(f"\n{'layer (setting)':24}  {'dim':>5}  {'classifier':10}  {'5-fold accuracy':17}  {'fit s/fold':>10}  test")
    for r in sorted(both.results, key=lambda r: (r.layer, r.classifier)):
        print(f"{r.layer:24}  {r.dim:5d}  {r.classifier:10}  {r.mean:.4f} ± {r.std:.4f}  {r.fit_seconds:10.2f}  "
              f"{r.test_accuracy:.4f}")
    best = both.best
    setting = "flip" if best.layer.endswith(" flip") else "plain"
    layer = best.layer.removesuffix(" flip")
    print(f"\nchosen by cross-validation on train/ only: {best.classifier} on {layer} ({setting}), "
          f"{best.mean:.4f} ± {best.std:.4f}")
    train, test = stores[setting]
    fitted = fit_classifier(replace(fit_config(best.classifier, ProbeConfig(train)), layer=layer,
                                    out=folder / "best.joblib", overwrite=True))
    report = evaluate_store(fitted.path, test)
    print(f"{replace(best, layer=layer).fit_command(str(train))}, then evaluate on test/: accuracy "
          f"{report.accuracy:.4f} (n={report.n})")
    top = max(both.results, key=lambda r: r.test_accuracy)
    print(f"for the record, the best on test/ (not a choice: test/ chooses nothing): {top.classifier} on {top.layer}, "
          f"{top.test_accuracy:.4f}, whose 5-fold accuracy on train/ was {top.mean:.4f} ± {top.std:.4f}")
    today = {kind: r.test_accuracy for r in both.results if r.layer == LAYERS[0] for kind in [r.classifier]}
    print("baseline, plain " + LAYERS[0] + " on test/: " + ", ".join(f"{k} {v:.4f}" for k, v in today.items()))
    print("--augment flip (both views as training rows) vs flip-averaged rows, " + LAYERS[0] + ", test/ accuracy: "
          + ", ".join(f"{k} {a:.4f} averaged / {v:.4f} both views"
                      for k, (a, v) in augment_measurement(folder, ("logreg", "svm", "svm-rbf")).items()))
    if args.plot:
        plot_probe(both, args.plot)
        print(f"figure: {args.plot} ({args.plot.stat().st_size / 1e3:.0f} kB)")
    if args.report:
        args.report.write_text(both.to_json())


def write_large(path: Path, rows: int, dim: int, layers: int) -> None:
    from alexfeat.store.provenance import Provenance
    from alexfeat.store.writer import StoreWriter

    names = [f"layer{i}" for i in range(layers)]
    attrs = {"classes": json.dumps(["a", "b", "c", "d"]), "model": "synthetic", "weights": "none",
             "layers": json.dumps(names), "preprocess": "{}", "options": json.dumps({"pool": "none",
                                                                                      "dtype": "float16"}),
             "alexfeat_version": "bench"}
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, rows)
    # Layer i carries the class i+1 times as strongly: the probe should rank them in that order.
    centres = [rng.standard_normal((4, dim)).astype(np.float32) * (i + 1) / np.sqrt(dim) for i in range(layers)]
    writer = StoreWriter.create(path, rows, {n: dim for n in names}, "float16", Provenance.from_attrs(attrs))
    for start in range(0, rows, 16384):
        y = labels[start:start + 16384]
        writer.write_rows(start, {n: (rng.standard_normal((len(y), dim), dtype=np.float32) + c[y]).astype(np.float16)
                                  for n, c in zip(names, centres)})
    writer.finish(rows, [f"r{i}" for i in range(rows)], labels.tolist(), [])


def large(args: argparse.Namespace) -> None:
    folder = args.dir or Path(tempfile.mkdtemp(prefix="bench_probe_large_"))
    folder.mkdir(parents=True, exist_ok=True)
    store = folder / "large.h5"
    print(machine())
    if not store.exists():
        started = time.perf_counter()
        write_large(store, args.rows, args.dim, 4)
        print(f"wrote {store}: {args.rows} rows x 4 layers x {args.dim} float16 ({store.stat().st_size / 1e9:.2f} GB) "
              f"in {time.perf_counter() - started:.0f} s")
    commands = {"info (baseline)": ["info", str(store)]}
    if args.fit_baseline:
        commands["fit-logreg, one layer, every row (baseline)"] = ["fit-logreg", str(store), "--layer", "layer0", "-o",
                                                                   str(folder / "m.joblib"), "--overwrite"]
    commands |= {
        f"probe --max-rows {args.max_rows}, 4 layers, logreg": ["probe", str(store), "--max-rows", str(args.max_rows),
                                                                "--report", str(folder / "probe.json"),
                                                                "--overwrite"],
    }
    for name, argv in commands.items():
        code = ("import resource, sys, time; from alexfeat.cli.app import app\nstarted = time.perf_counter()\n"
                f"try:\n    app({argv!r}, standalone_mode=False)\nfinally:\n"
                "    print('BENCH', time.perf_counter() - started, "
                "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'torch' in sys.modules)")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        last = [line for line in done.stdout.splitlines() if line.startswith("BENCH")]
        if done.returncode or not last:
            print(f"{name}: failed\n{done.stderr[-2000:]}")
            continue
        _, seconds, rss, torch = last[0].split()
        print(f"{name:45}: {float(seconds):6.1f} s, peak RSS {float(rss):6.0f} MB, torch loaded: {torch}")
        if argv[0] == "probe":
            print("\n".join("    " + line for line in done.stdout.splitlines() if not line.startswith("BENCH")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="dogs", choices=["dogs", "large"])
    parser.add_argument("--dir", type=Path, default=None, help="where the stores go (kept; reused when there)")
    parser.add_argument("--plot", type=Path, default=None, help="dogs: draw the probe here")
    parser.add_argument("--report", type=Path, default=None, help="dogs: the probe as JSON")
    parser.add_argument("--tta-images", type=int, default=300, help="dogs: photos featurize --tta flip is timed on "
                                                                     "(0: not timed)")
    parser.add_argument("--rows", type=int, default=250_000, help="large: rows")
    parser.add_argument("--dim", type=int, default=512, help="large: features per layer")
    parser.add_argument("--max-rows", type=int, default=20_000, help="large: rows the probe samples")
    parser.add_argument("--fit-baseline", action="store_true", help="large: also fit-logreg on one layer's 250k rows")
    args = parser.parse_args()
    dogs(args) if args.what == "dogs" else large(args)


if __name__ == "__main__":
    main()
