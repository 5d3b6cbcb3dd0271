"""AlexNet as alexfeat builds it: torchvision's module names, optionally thinner, with batch-norm or other
input channels, and the DeCAF/Caffe names of its layers. The torchvision backend builds and names it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from alexfeat.featurizer.arch import Arch

__all__ = ["AlexNetLayout", "alexnet_layout", "layout_of", "build_alexnet", "ALEXNET_LAYERS"]

# AlexNet's five convolutions, the one definition of its topology: (name, out channels, kernel,
# stride, padding, max-pool after). The fully connected layers fc6, fc7, fc8 follow.
_ALEXNET_CONVS = (("conv1", 64, 11, 4, 2, True), ("conv2", 192, 5, 1, 2, True), ("conv3", 384, 3, 1, 1, False),
                  ("conv4", 256, 3, 1, 1, False), ("conv5", 256, 3, 1, 1, True))


@dataclass(frozen=True)
class AlexNetLayout:
    """Where AlexNet's named layers sit in the module tree built by ``build_alexnet``.

    ``modules``: the modules holding each learned layer's parameters (with batch-norm, the
    convolution and its norm). ``nodes``: the DeCAF/Caffe layer names on the feature-extraction
    graph; conv* and fc6/fc7 are after their ReLU, *-pre before it, pool5 the flattened 256x6x6 map.
    ``pooled``: the aliases that differ with ``--pool avg|max`` (pool5 is then the last max-pool's
    256-channel map, reduced over space like every other map).
    """

    modules: dict[str, list[str]]
    nodes: dict[str, str]
    pooled: dict[str, str]


def alexnet_layout(batch_norm: bool = False) -> AlexNetLayout:
    modules: dict[str, list[str]] = {}
    nodes: dict[str, str] = {}
    index = 0
    for name, *_, pool in _ALEXNET_CONVS:
        modules[name] = [f"features.{index}"] + ([f"features.{index + 1}"] if batch_norm else [])
        index += 2 if batch_norm else 1
        nodes[name] = f"features.{index}"  # the ReLU
        pooled = {"pool5": f"features.{index + 1}"} if pool else {}
        index += 2 if pool else 1
    nodes["pool5"] = "flatten"
    for name, linear in (("fc6", 1), ("fc7", 4)):
        modules[name] = [f"classifier.{linear}"]
        nodes[f"{name}-pre"], nodes[name] = f"classifier.{linear}", f"classifier.{linear + 1}"
    modules["fc8"] = ["classifier.6"]
    nodes["fc8"] = "classifier.6"
    return AlexNetLayout(modules, nodes, pooled)


ALEXNET_LAYERS = alexnet_layout().nodes


def layout_of(net: nn.Module) -> AlexNetLayout:
    """The layout of a built AlexNet (with batch-norm where it has it)."""
    return alexnet_layout(any(isinstance(m, nn.BatchNorm2d) for m in net.modules()))


def build_alexnet(arch: Arch) -> nn.Module:
    """torchvision's AlexNet (same module names), optionally thinner, with batch-norm, or other input channels."""
    num_classes = 1000 if arch.num_classes is None else arch.num_classes
    dropout = 0.5 if arch.dropout is None else arch.dropout
    with torch.device("meta"):  # only the class and its forward are kept; the layers are built below
        net = torchvision.models.AlexNet(num_classes=num_classes, dropout=dropout)
    w = lambda c: max(8, int(round(c * arch.width_mult)))  # noqa: E731
    layers: list[nn.Module] = []
    channels = arch.in_chans
    for _, out, kernel, stride, padding, pool in _ALEXNET_CONVS:
        layers.append(nn.Conv2d(channels, w(out), kernel, stride=stride, padding=padding, bias=not arch.batch_norm))
        layers += [nn.BatchNorm2d(w(out))] if arch.batch_norm else []
        layers.append(nn.ReLU(inplace=True))
        layers += [nn.MaxPool2d(3, 2)] if pool else []
        channels = w(out)
    net.features = nn.Sequential(*layers)
    f = w(4096)
    net.classifier = nn.Sequential(
        nn.Dropout(dropout), nn.Linear(channels * 36, f), nn.ReLU(inplace=True),
        nn.Dropout(dropout), nn.Linear(f, f), nn.ReLU(inplace=True), nn.Linear(f, num_classes),
    )
    return net
