"""Layer groups of a network (the units of layer-wise fine-tuning), head replacement and freezing."""

from __future__ import annotations

from torch import nn

from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.models import classifier_name

__all__ = ["layer_groups", "replace_head", "set_trainable", "ALEXNET_GROUPS"]

# AlexNet's 8 learned layers, named as in the DeCAF / Caffe papers.
ALEXNET_GROUPS = {
    "conv1": ["features.0"], "conv2": ["features.3"], "conv3": ["features.6"], "conv4": ["features.8"],
    "conv5": ["features.10"], "fc6": ["classifier.1"], "fc7": ["classifier.4"], "fc8": ["classifier.6"],
}


def layer_groups(net: nn.Module, model: str) -> dict[str, list[str]]:
    """Ordered {group: [module names]}, input side first, the classification head last.

    AlexNet: its 8 layers. Other models: the top-level blocks that hold parameters, a
    top-level container of stages (timm's ``blocks``, torchvision's ``features``) split
    into its stages.
    """
    if model == "alexnet":
        return dict(ALEXNET_GROUPS)
    groups: dict[str, list[str]] = {}
    for name, child in net.named_children():
        if not any(True for _ in child.parameters()):
            continue
        stages = list(child.named_children())
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and any(isinstance(m, nn.Sequential) for _, m in stages):
            for stage, module in stages:
                if any(True for _ in module.parameters()):
                    groups[f"{name}.{stage}"] = [f"{name}.{stage}"]
        else:
            groups[name] = [name]
    head = classifier_name(net)
    owner = next((g for g, mods in groups.items() if any(head == m or head.startswith(m + ".") for m in mods)), None)
    if owner is None:
        raise AlexfeatError("cannot find the classification head among the network's top-level blocks")
    groups[owner] = [m for m in groups[owner] if m != head] or []
    if not groups[owner]:
        del groups[owner]
    groups["head"] = [head]
    return groups


def replace_head(net: nn.Module, num_classes: int) -> None:
    """A freshly initialised classification layer for ``num_classes`` classes."""
    if hasattr(net, "reset_classifier") and hasattr(net, "pretrained_cfg"):
        net.reset_classifier(num_classes)
        return
    name = classifier_name(net)
    parent_name, _, attr = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))


def set_trainable(net: nn.Module, groups: dict[str, list[str]], trainable: list[str]) -> None:
    """requires_grad on exactly the parameters of the ``trainable`` groups."""
    names = {m for g in trainable for m in groups[g]}
    for pname, param in net.named_parameters():
        param.requires_grad = any(pname == m or pname.startswith(m + ".") for m in names)
