"""Featurize throughput: alexfeat vs the forward pass alone vs a hand-written torchvision loop.

    python bench/featurize.py [IMAGES] [--layers pool5,fc6,fc7] [--batch-size 64] [--repeat 2]

All three run in the same process on the same images and load the same AlexNet
weights file (random values, saved once: throughput does not depend on the values,
and loading a file is what a pretrained run does). Prints images/s for each and
the ratios the project targets (>= 0.9x forward-only, >= 1.3x hand-written loop).

The three run back to back in each repeat and the ratios are taken within a repeat, so
that drift in the machine's speed (a shared VM's varies by 15% over minutes) does not
land on one method only; the median over repeats is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the alexfeat CLI does; applies to all three

import h5py  # noqa: E402
import torch  # noqa: E402
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from alexfeat.featurizer.featurize import FeaturizeConfig, featurize  # noqa: E402
from alexfeat.featurizer.network import build_featurizer  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "dogs-vs-cats" / "test"


def forward_only(weights: Path, layers: tuple[str, ...], batch_size: int, n: int) -> float:
    """The compute limit: alexfeat's own network cut at the same layers, on synthetic uint8 batches."""
    fz = build_featurizer("alexnet", str(weights), layers, "none", torch.device("cpu"))
    images = torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8)
    fz(images)  # warm-up
    done, start = 0, time.perf_counter()
    while done < n:
        fz(images)
        done += batch_size
    return done / (time.perf_counter() - start)


def alexfeat_run(images: Path, weights: Path, layers: tuple[str, ...], batch_size: int, out: Path) -> float:
    config = FeaturizeConfig(images=images, out=out, weights=str(weights), layers=layers, batch_size=batch_size,
                             overwrite=True, quiet=True)
    start = time.perf_counter()
    result = featurize(config)
    return (result.rows + len(result.skipped)) / (time.perf_counter() - start)


def handwritten_loop(images: Path, weights: Path, batch_size: int, out: Path) -> float:
    """What a careful notebook does: ImageFolder + standard transforms + DataLoader + fc7 + h5py."""
    start = time.perf_counter()
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    dataset = torchvision.datasets.ImageFolder(str(images), transform=tf)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=min(4, os.cpu_count() or 1))
    model = torchvision.models.alexnet()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    model.classifier = model.classifier[:6]  # up to fc7 + ReLU
    with h5py.File(out, "w") as f:
        ds = f.create_dataset("fc7", shape=(len(dataset), 4096), dtype="f4")
        labels = f.create_dataset("labels", shape=(len(dataset),), dtype="i8")
        row = 0
        with torch.no_grad():
            for x, y in loader:
                ds[row:row + len(x)] = model(x).numpy()
                labels[row:row + len(x)] = y.numpy()
                row += len(x)
    return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="?", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--layers", default="fc7")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="repeats; medians are reported")
    args = parser.parse_args()
    if not args.images.is_dir():
        sys.exit(f"{args.images} is not a folder (pass an image folder; the default needs ../shared)")
    layers = tuple(args.layers.split(","))
    n_images = sum(1 for p in args.images.rglob("*") if p.is_file())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; {n_images} images in {args.images}; layers {args.layers}")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "alexnet.pth"
        torch.save(torchvision.models.alexnet().state_dict(), weights)
        rates = {"forward-only": [], "alexfeat": [], "hand-written": []}
        for _ in range(args.repeat):
            rates["forward-only"].append(forward_only(weights, layers, args.batch_size, max(256, n_images // 2)))
            rates["alexfeat"].append(alexfeat_run(args.images, weights, layers, args.batch_size, Path(tmp) / "a.h5"))
            rates["hand-written"].append(handwritten_loop(args.images, weights, args.batch_size, Path(tmp) / "b.h5"))
    for name, values in rates.items():
        print(f"{name:14s} {statistics.median(values):8.1f} images/s median   "
              f"(runs: {', '.join(f'{r:.1f}' for r in values)})")
    for other, target in (("forward-only", 0.9), ("hand-written", 1.3)):
        ratios = [a / b for a, b in zip(rates["alexfeat"], rates[other])]
        print(f"alexfeat / {other} = {statistics.median(ratios):.2f} median of "
              f"[{', '.join(f'{r:.2f}' for r in ratios)}]  (target >= {target:.2f})")


if __name__ == "__main__":
    main()
