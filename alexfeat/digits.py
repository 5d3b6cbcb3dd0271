"""The embedded demo data: scikit-learn's bundled handwritten digits as PNG class folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_digits"]


def write_digits(root: Path, test_fraction: float = 0.25, seed: int = 0) -> tuple[Path, Path]:
    """Write the 1797 8x8 digit scans as ``root/{train,test}/<digit>/<n>.png``; return both folders.

    The split is stratified and seeded; existing files are kept (the call is idempotent).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    indices = np.arange(len(digits.target))
    train, test = train_test_split(indices, test_size=test_fraction, stratify=digits.target, random_state=seed)
    for split, chosen in (("train", train), ("test", test)):
        for i in chosen:
            path = root / split / str(digits.target[i]) / f"{i:04d}.png"
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * (255.0 / 16.0)).round().astype(np.uint8)
            Image.fromarray(255 - pixels, mode="L").save(path)  # dark ink on white, like a scan
    return root / "train", root / "test"
