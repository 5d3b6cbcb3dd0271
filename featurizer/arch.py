"""A network's architecture settings: everything needed to rebuild it before loading its weights.

Plain data (no torch): checkpoints, stores and classifier models record it as a dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Arch"]


@dataclass(frozen=True)
class Arch:
    """Everything needed to rebuild a network before loading its weights."""

    model: str = "alexnet"
    num_classes: int | None = None  # None: the architecture's default head
    width_mult: float = 1.0  # AlexNet only: scales every layer's channel count
    batch_norm: bool = False  # AlexNet only: batch-norm after each convolution
    in_chans: int = 3
    dropout: float | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "Arch":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def unnamed_settings(self) -> list[str]:
        """What ``--model`` alone cannot rebuild around this network's plain state dict (empty: nothing):
        loading one reads the head's size and AlexNet's batch-norm from the weights, but nothing tells a
        width or input channels."""
        return ([f"--width-mult {self.width_mult:g}"] if self.width_mult != 1.0 else []) + \
               ([f"{self.in_chans} input channel(s)"] if self.in_chans != 3 else [])
