"""Seconds per training epoch: alexfeat train-scratch against a hand-written torchvision loop.

Both train AlexNet from scratch on the same images with the same settings (random resized
crop + flip, SGD, batch 64, cosine) and score the same test images after every epoch. The hand
loop is the usual one: ImageFolder decodes every JPEG every epoch, per-sample PIL transforms
in DataLoader workers, NCHW float. alexfeat decodes each image once into a uint8 cache at the
resize size, augments tensors with torchvision.transforms.v2 and runs channels-last.

    python bench/train.py --data ../shared/data/dogs-vs-cats --per-class 300 --epochs 3 --image-size 112
    python bench/train.py --precision bf16     # alexfeat with bfloat16 autocast (the hand loop stays fp32)
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms

from alexfeat.featurizer.decode import IMAGENET_MEAN, IMAGENET_STD
from alexfeat.trainers.config import TrainConfig
from alexfeat.trainers.engine import train


def subset(src: Path, dst: Path, per_class: int) -> Path:
    """The first ``per_class`` images of each class, linked into ``dst``."""
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / cls.name).mkdir(parents=True)
        for image in sorted(cls.iterdir())[:per_class]:
            (dst / cls.name / image.name).symlink_to(image.resolve())
    return dst


def hand_loop(train_dir: Path, test_dir: Path, epochs: int, size: int, batch: int, workers: int) -> list[float]:
    resize = round(size * 256 / 224)
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([transforms.Resize(resize), transforms.RandomResizedCrop(size, scale=(0.35, 1.0)),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(size), transforms.ToTensor(),
                                  normalize])
    train_set = torchvision.datasets.ImageFolder(str(train_dir), train_tf)
    test_set = torchvision.datasets.ImageFolder(str(test_dir), test_tf)
    train_loader = torch.utils.data.DataLoader(train_set, batch, shuffle=True, num_workers=workers)
    test_loader = torch.utils.data.DataLoader(test_set, batch, num_workers=workers)
    torch.manual_seed(0)
    net = torchvision.models.alexnet(num_classes=len(train_set.classes))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        net.train()
        for x, y in train_loader:
            loss = nn.functional.cross_entropy(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        net.eval()
        with torch.inference_mode():
            for x, y in test_loader:
                net(x)
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/dogs-vs-cats")
    parser.add_argument("--per-class", type=int, default=300, help="training images per class")
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="the hand loop's DataLoader workers")
    parser.add_argument("--alexfeat-workers", type=int, default=None, help="alexfeat's workers (default: its own)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="alexfeat's precision (the hand loop runs in fp32)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_dir = subset(args.data / "train", tmp / "train", args.per_class)
        test_dir = subset(args.data / "test", tmp / "test", args.test_per_class)
        started = time.perf_counter()
        hand = hand_loop(train_dir, test_dir, args.epochs, args.image_size, args.batch_size, args.workers)
        hand_total = time.perf_counter() - started
        started = time.perf_counter()
        result = train(TrainConfig("scratch", train_dir, test_dir, tmp / "run", epochs=args.epochs,
                                   image_size=args.image_size, batch_size=args.batch_size, augment="standard",
                                   workers=args.alexfeat_workers, precision=args.precision, quiet=True))
        ours_total = time.perf_counter() - started
        ours = [row["seconds"] for row in result.run.metrics()]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    ours_workers = "default" if args.alexfeat_workers is None else args.alexfeat_workers
    print(f"data: {2 * args.per_class} training + {2 * args.test_per_class} test images, AlexNet at "
          f"{args.image_size} px, batch {args.batch_size}, {args.workers} hand-loop workers, {args.epochs} epochs; "
          f"alexfeat in {args.precision}, workers {ours_workers}")
    print(f"hand loop   seconds per epoch: {', '.join(f'{s:.1f}' for s in hand)}; total {hand_total:.1f} s")
    print(f"alexfeat    seconds per epoch: {', '.join(f'{s:.1f}' for s in ours)}; total {ours_total:.1f} s "
          f"(decoding once, checkpoints and curves included)")
    steady_hand, steady_ours = sum(hand[1:]) / max(1, len(hand) - 1), sum(ours[1:]) / max(1, len(ours) - 1)
    print(f"per epoch after the first: hand {steady_hand:.1f} s, alexfeat {steady_ours:.1f} s: "
          f"{steady_hand / steady_ours:.2f}x; whole run {hand_total / ours_total:.2f}x")


if __name__ == "__main__":
    main()
