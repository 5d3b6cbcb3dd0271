"""Streaming vs in-memory classifier fits: accuracy, time and peak resident memory.

Writes a synthetic labelled store (N x D float32: class centres plus noise, so that the task is
neither trivial nor hopeless) and a test store, then runs each fit, followed by ``evaluate`` on the
test store, in its own child process and reports that process's peak RSS (``ru_maxrss``).

    nice -n 10 python bench/out_of_core.py --rows 50000 --dim 2048            # both fits
    nice -n 10 python bench/out_of_core.py --rows 250000 --dim 4096 --only streaming
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_store(path: Path, rows: int, dim: int, classes: int, seed: int, centres: np.ndarray) -> None:
    from alexfeat.store.provenance import Provenance
    from alexfeat.store.writer import StoreWriter

    attrs = {"classes": json.dumps([f"c{i}" for i in range(classes)]), "model": "synthetic", "weights": "none",
             "layers": json.dumps(["fc7"]), "preprocess": "{}", "options": json.dumps({"pool": "none",
                                                                                         "dtype": "float32"}),
             "alexfeat_version": "bench"}
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    writer = StoreWriter.create(path, rows, {"fc7": dim}, "float32", Provenance.from_attrs(attrs))
    step = 8192
    for start in range(0, rows, step):
        y = labels[start:start + step]
        X = rng.standard_normal((len(y), dim), dtype=np.float32)
        X += centres[y]
        writer.write_rows(start, {"fc7": X})
    writer.finish(rows, [f"r{i}" for i in range(rows)], labels.tolist(), [])


def child(kind: str, streaming: bool, train: Path, test: Path, out: Path) -> None:
    from alexfeat.classifiers.evaluate import evaluate_store
    from alexfeat.classifiers.fit import FitConfig, fit_classifier

    started = time.perf_counter()
    # overwrite: the bench rewrites its own model file on every run (also with --dir)
    result = fit_classifier(FitConfig(kind=kind, store=train, out=out, streaming=streaming, hidden=128, overwrite=True))
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    report = evaluate_store(out, test)
    print(json.dumps({"accuracy": report.accuracy, "fit_s": fit_seconds,
                      "evaluate_s": time.perf_counter() - started,
                      "epochs": result.model.meta.get("best_epochs"),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--test-rows", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--separation", type=float, default=3.0, help="distance scale between class centres")
    parser.add_argument("--kind", default="logreg", choices=["logreg", "svm", "mlp"])
    parser.add_argument("--only", choices=["streaming", "memory"])
    parser.add_argument("--dir", type=Path, default=None, help="where the stores go (default: a temp folder)")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "STREAMING", "TRAIN", "TEST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, streaming, train, test = args.child
        child(kind, streaming == "1", Path(train), Path(test), Path(train).with_suffix(f".{streaming}.joblib"))
        return
    folder = args.dir or Path(tempfile.mkdtemp(prefix="out_of_core_"))
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = (rng.standard_normal((args.classes, args.dim)) * args.separation / np.sqrt(args.dim)).astype(np.float32)
    train, test = folder / "train.h5", folder / "test.h5"
    started = time.perf_counter()
    write_store(train, args.rows, args.dim, args.classes, 1, centres)
    write_store(test, args.test_rows, args.dim, args.classes, 2, centres)
    size = args.rows * args.dim * 4
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM")
    print(f"store: {args.rows} x {args.dim} float32 = {size / 1e9:.2f} GB, {args.classes} classes "
          f"(+ {args.test_rows} test rows), written in {time.perf_counter() - started:.0f} s; fit {args.kind}")
    modes = [m for m in ("memory", "streaming") if args.only in (None, m)]
    for mode in modes:
        cmd = [sys.executable, __file__, "--child", args.kind, "1" if mode == "streaming" else "0", str(train),
               str(test)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"{mode:9s}: failed\n{done.stderr[-2000:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{mode:9s}: test accuracy {r['accuracy']:.4f}  fit {r['fit_s']:.0f} s  evaluate "
              f"{r['evaluate_s']:.1f} s  peak RSS {r['peak_rss_mb']:.0f} MB"
              + (f"  ({r['epochs']} epochs)" if r["epochs"] else ""))
    if args.dir is None:
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


if __name__ == "__main__":
    main()
