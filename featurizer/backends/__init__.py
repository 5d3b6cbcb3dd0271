"""Model families: one Backend class each, that builds, loads, preprocesses, traces and divides its networks.

A new family is one module with a ``Backend`` subclass and one entry in ``BACKENDS``.
"""

from __future__ import annotations

from torch import nn

from alexfeat.featurizer.backends.base import Backend, LoadedModel
from alexfeat.featurizer.backends.timm import TimmBackend
from alexfeat.featurizer.backends.torchvision import TorchvisionBackend

__all__ = ["Backend", "LoadedModel", "BACKENDS", "backend_for", "backend_of"]

# Asked in order: families with a name prefix first; torchvision, which takes every other name, last.
BACKENDS: tuple[Backend, ...] = (TimmBackend(), TorchvisionBackend())


def backend_for(model: str) -> Backend:
    """The family of ``model`` (a ``--model`` value); an unknown name is refused when built or loaded."""
    return next(b for b in BACKENDS if b.handles(model))


def backend_of(net: nn.Module) -> Backend:
    """The family that built ``net``."""
    return next(b for b in BACKENDS if b.owns(net))
