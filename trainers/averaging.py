"""Stochastic weight averaging (Izmailov et al., 2018): the mean of the weights a run passes through.

From ``--swa-from`` on, the trainer runs at a constant learning rate and adds the weights at the end
of each epoch to a running mean. The mean sits in a wider, flatter region of the loss than any one
of them and usually generalises better. Its batch-norm statistics are not the mean of the visited
ones: they are re-estimated with a pass over the training images after each update.
"""

from __future__ import annotations

import copy
from typing import Callable, Collection, Iterable

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """The running mean of a network's weights (a separate copy of the network, in eval mode)."""

    def __init__(self, net: nn.Module):
        self.net = copy.deepcopy(net).eval()
        for param in self.net.parameters():
            param.requires_grad_(False)
        self.count = 0  # networks averaged so far

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """Add the current weights of ``net`` (the network being trained) to the mean."""
        for mean, current in zip(self.net.parameters(), net.parameters(), strict=True):
            mean.lerp_(current.detach(), 1.0 / (self.count + 1))
        self.count += 1

    def load(self, state_dict: dict[str, torch.Tensor], count: int) -> None:
        """Continue from a saved mean of ``count`` networks (resume)."""
        self.net.load_state_dict(state_dict)
        self.count = count

    @torch.no_grad()
    def estimate_batch_norm(self, batches: Iterable[torch.Tensor],
                            forward: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                            kept: Collection[str] = ()) -> None:
        """Batch-norm running statistics of the averaged weights: the plain mean over ``batches``.

        The batch-norm layers named in ``kept`` keep theirs (they stayed in inference mode in training).
        """
        norms = [m for name, m in self.net.named_modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and name not in kept]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
        self.net.train()
        for name, module in self.net.named_modules():
            if name in kept:
                module.eval()
        for x in batches:
            forward(self.net, x)
        self.net.eval()
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
