"""The stratified hold-out split that fit-* and the trainers share (torch-free: fit-* must not load torch)."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from alexfeat.errors import AlexfeatError

__all__ = ["stratified_split"]


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (kept, held out), each sorted; ``fraction`` of every class is held out.

    ``fraction`` 0 holds nothing out. Raises AlexfeatError when a class is too small to split.
    """
    rows = np.arange(len(labels))
    if fraction == 0:
        return rows, rows[:0]
    try:
        kept, held = train_test_split(rows, test_size=fraction, stratify=np.asarray(labels), random_state=seed)
    except ValueError as exc:
        raise AlexfeatError(f"cannot hold out {fraction:.0%} for validation: {exc}") from None
    return np.sort(kept), np.sort(held)
