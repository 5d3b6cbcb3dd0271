"""Throughput of ``featurize`` on the same images: the local run, local --parts, and --engine ray.

Each run is a fresh ``alexfeat`` process, timed wall-clock from start to exit (model loading, and
for Ray the cluster start, included), on the first N images of a folder:

    nice -n 10 python bench/engines.py /work/shared/data/dogs-vs-cats/train --images 400 \\
        --model timm:efficientnet_lite0 --weights /work/shared/weights/efficientnet_lite0_imagenet_timm.pth
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alexfeat.featurizer.sources.folders import list_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path)
    parser.add_argument("--images", dest="count", type=int, default=400)
    parser.add_argument("--model", default="timm:efficientnet_lite0")
    parser.add_argument("--weights", default="/work/shared/weights/efficientnet_lite0_imagenet_timm.pth")
    parser.add_argument("--actors", type=int, default=1)
    args = parser.parse_args()
    found = list_images(args.images)
    step = max(1, len(found) // args.count)  # every class, not just the first folder
    chosen = [found.file(i).resolve() for i in range(0, len(found), step)][:args.count]
    work = Path(tempfile.mkdtemp(prefix="engines_"))
    listing = work / "list.csv"
    listing.write_text("".join(f"{p},{p.parent.name}\n" for p in chosen))
    common = ["--model", args.model, "--weights", args.weights, "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5",
              "--quiet"]
    alexfeat = [sys.executable, "-m", "alexfeat", "featurize", str(listing)]
    runs = {
        "local": alexfeat + [str(work / "local.h5"), *common],
        "local --parts": alexfeat + ["--parts", str(work / "parts"), "--part-size", "100", *common],
        f"ray ({args.actors} actor)": alexfeat + ["--parts", str(work / "ray"), "--engine", "ray", "--part-size",
                                                   "100", "--actors", str(args.actors), *common],
    }
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs; {len(chosen)} images from "
          f"{args.images}; model {args.model}")
    try:
        for name, cmd in runs.items():
            started = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if done.returncode:
                print(f"{name:18s} failed: {done.stderr[-1500:]}")
                continue
            print(f"{name:18s} {seconds:6.1f} s  {len(chosen) / seconds:6.1f} images/s")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
