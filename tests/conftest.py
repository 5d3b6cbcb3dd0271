"""Shared fixtures: synthetic image folders and random-init weights (no network, ever)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from typer.testing import CliRunner

SHARED = Path(__file__).resolve().parents[2] / "shared"
ALEXNET_CACHE_NAME = Path(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url).name

COLORS = {"blue": (30, 60, 200), "red": (200, 40, 30)}


def make_image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (80, 64), seed: int = 0,
               fmt: str | None = None) -> Path:
    """A noisy image dominated by ``color`` (so classes are separable)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(-40, 40, size=(size[1], size[0], 3))
    array = np.clip(np.array(color)[None, None, :] + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt)
    return path


def make_class_folder(root: Path, per_class: int = 6, suffixes=(".jpg", ".png")) -> Path:
    for c, (name, color) in enumerate(COLORS.items()):
        for i in range(per_class):
            suffix = suffixes[i % len(suffixes)]
            make_image(root / name / f"{name}_{i:02d}{suffix}", color, size=(60 + 7 * i, 50 + 5 * i), seed=100 * c + i)
    return root


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    """Two classes (blue, red), six images each, JPEG and PNG, varied sizes."""
    return make_class_folder(tmp_path / "images")


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A tiny PNG that claims side x side pixels: over PIL's decompression-bomb limit."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture
def bad_images_dir(tmp_path: Path) -> Path:
    """Four good images and one of each kind of bad file, in one flat folder."""
    root = tmp_path / "mixed"
    for i in range(4):
        make_image(root / f"good_{i}.jpg", COLORS["blue"], seed=i)
    good = (root / "good_0.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("this is not an image")
    bomb_png(root / "bomb.png")
    (root / ".hidden.jpg").write_bytes(good)
    return root


@pytest.fixture(scope="session")
def alexnet_weights(tmp_path_factory) -> Path:
    """A random-init AlexNet state dict saved to a file (stands in for the ImageNet weights)."""
    torch.manual_seed(1234)
    path = tmp_path_factory.mktemp("weights") / "alexnet_random.pth"
    torch.save(torchvision.models.alexnet().state_dict(), path)
    return path


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch, alexnet_weights: Path) -> Path:
    """A TORCH_HOME whose hub cache holds 'the' pretrained AlexNet file, as after a download."""
    home = tmp_path / "torch_home"
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    os.link(alexnet_weights, checkpoints / ALEXNET_CACHE_NAME)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch) -> Path:
    home = tmp_path / "empty_torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def cli():
    """Run the alexfeat CLI in-process: ``cli("featurize", ...)`` -> click Result."""
    from alexfeat.cli.app import app

    runner = CliRunner()

    def invoke(*args: str | Path):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


def hold_lock(path: Path) -> "subprocess.Popen":
    """Another process holding the run lock ``path`` (as a running featurize would) until killed."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from alexfeat.lock import RunLock\n"
         f"with RunLock({str(path)!r}, 'x'):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def make_store(path: Path, X: np.ndarray | dict[str, np.ndarray], y: np.ndarray, classes: list[str],
               layer: str = "fc7", **attrs) -> Path:
    """A complete feature store holding ``X`` (one layer named ``layer``, or {layer: X}), written through the
    store's own writer."""
    import json

    from alexfeat.store.provenance import Provenance
    from alexfeat.store.writer import StoreWriter

    layers = X if isinstance(X, dict) else {layer: X}
    n = len(next(iter(layers.values())))
    base = {"classes": json.dumps(classes), "model": "alexnet", "weights": "none(seed=0)",
            "layers": json.dumps(list(layers)), "preprocess": json.dumps({"crop": 64, "resize": 72}),
            "options": json.dumps({"pool": "none", "dtype": "float32"}), "alexfeat_version": "test"}
    writer = StoreWriter.create(path, n, {k: v.shape[1] for k, v in layers.items()}, "float32",
                                Provenance.from_attrs({**base, **attrs}))
    writer.write_rows(0, {k: v.astype(np.float32) for k, v in layers.items()})
    writer.finish(n, [f"img_{i}.png" for i in range(n)], list(map(int, y)), [])
    return path


@pytest.fixture
def blobs(tmp_path: Path):
    """Separable and overlapping 3-class Gaussian stores, each split into train and test."""
    from sklearn.datasets import make_blobs

    def build(name: str, spread: float) -> tuple[Path, Path]:
        X, y = make_blobs(n_samples=240, n_features=20, centers=3, cluster_std=spread, random_state=0)
        return (make_store(tmp_path / f"{name}_train.h5", X[:180], y[:180], ["a", "b", "c"]),
                make_store(tmp_path / f"{name}_test.h5", X[180:], y[180:], ["a", "b", "c"]))

    return {"separable": build("sep", 1.0), "overlapping": build("ovl", 12.0)}


def load_checkpoint(path: Path) -> dict:
    """A checkpoint file's dict, as the trainers wrote it (``Checkpoint.read(path).to_dict()``)."""
    from alexfeat.featurizer.checkpoint import Checkpoint

    return Checkpoint.read(path).to_dict()


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write a checkpoint file from its dict (``Checkpoint.from_dict(payload).write(path)``)."""
    from alexfeat.featurizer.checkpoint import Checkpoint

    Checkpoint.from_dict(payload).write(path)
