"""Layer groups of a network (the units of layer-wise fine-tuning), head replacement and freezing.

A group is a list of parameter names. Every trainable parameter is in exactly one group,
the groups follow the network from input to output, and the last one, the head, holds the
classification layer (with the final norm that feeds it, where the network has one).
"""

from __future__ import annotations

from torch import nn

from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.backends import backend_for, backend_of

__all__ = ["layer_groups", "head_modules", "replace_head", "set_trainable", "group_sizes"]


def layer_groups(net: nn.Module, model: str) -> dict[str, list[str]]:
    """Ordered {group: [parameter names]}, input side first, the classification head last (the family's
    own division); AlexfeatError when it does not place every parameter exactly once."""
    groups = backend_for(model).layer_groups(net, model)
    _check(net, groups)
    return groups


def head_modules(net: nn.Module) -> list[str]:
    """The classification layer(s) of ``net`` (two for a distilled model that classifies twice)."""
    return backend_of(net).head_modules(net)


def _check(net: nn.Module, groups: dict[str, list[str]]) -> None:
    placed = [p for params in groups.values() for p in params]
    names = [n for n, _ in net.named_parameters()]
    if sorted(placed) != sorted(names) or not groups.get(list(groups)[-1]):
        raise AlexfeatError("cannot divide this network into layer groups (use --schedule full)")


def group_sizes(net: nn.Module, groups: dict[str, list[str]]) -> dict[str, int]:
    """Number of parameter values in each group."""
    params = dict(net.named_parameters())
    return {g: sum(params[p].numel() for p in names) for g, names in groups.items()}


def replace_head(net: nn.Module, num_classes: int) -> None:
    """A freshly initialised classification layer for ``num_classes`` classes."""
    backend_of(net).replace_head(net, num_classes)


def set_trainable(net: nn.Module, groups: dict[str, list[str]], trainable: list[str]) -> None:
    """requires_grad on exactly the parameters of the ``trainable`` groups."""
    names = {p for g in trainable for p in groups[g]}
    for pname, param in net.named_parameters():
        param.requires_grad = pname in names
