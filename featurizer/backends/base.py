"""The contract of a model family, and what every family shares: state-dict loading, meta-device
networks, the generic classifier lookup and head replacement, and layer groups walked from the module tree."""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import Future
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn

from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.arch import Arch
from alexfeat.featurizer.decode import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from alexfeat.store.weights_id import WeightsId

__all__ = ["Backend", "LoadedModel", "walked_groups", "params_under"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class LoadedModel:
    """A network in eval mode with the identity of its weights and their preprocessing.

    ``identity`` is the weights' identity, or a Future of it while a file's sha256 is
    computed in the background; ``weights_id`` waits for it.
    """

    net: nn.Module
    arch: Arch
    identity: WeightsId | Future
    preprocess: Preprocess
    classes: tuple[str, ...] = ()
    preprocess_origin: str = ""  # where ``preprocess`` came from, when the weights did not bring it

    @property
    def weights_id(self) -> WeightsId:
        return self.identity.result() if isinstance(self.identity, Future) else self.identity


class Backend(ABC):
    """One model family: how it names, builds, loads, preprocesses, traces and divides its networks.

    Callers pick a backend by model name (``backends.backend_for``) or by built network
    (``backends.backend_of``) and never test for a family themselves.
    """

    @abstractmethod
    def handles(self, model: str) -> bool:
        """Whether ``model`` (a ``--model`` value) names a network of this family."""

    @abstractmethod
    def owns(self, net: nn.Module) -> bool:
        """Whether ``net`` was built by this family."""

    @abstractmethod
    def build(self, arch: Arch) -> nn.Module:
        """A randomly initialised network for ``arch`` (uses the current torch RNG); AlexfeatError for an
        unknown model or settings it does not accept."""

    @abstractmethod
    def load_pretrained(self, arch: Arch, download: bool) -> LoadedModel:
        """``arch`` with the family's default pretrained weights, in eval mode; AlexfeatError when they are
        not available (offline, or ``download`` False and not cached)."""

    @abstractmethod
    def fx(self) -> ModuleType:
        """The feature-extraction module to trace this family's networks with (``get_graph_node_names``,
        ``create_feature_extractor``)."""

    def default_preprocess(self, arch: Arch, net: nn.Module) -> Preprocess:
        """Preprocessing for weights that do not bring their own: ImageNet's (its gray level for 1 channel)."""
        gray = arch.in_chans == 1
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if not gray else ((0.449,), (0.226,))
        return Preprocess(mean=mean, std=std, grayscale=gray)

    def preprocess_origin(self, arch: Arch, net: nn.Module) -> str:
        """Where ``default_preprocess`` takes its mean and std from (said with weights that bring none)."""
        return "ImageNet's, the default"

    def graph_nodes(self, net: nn.Module) -> list[str]:
        """The feature-extraction graph node names of ``net`` (eval mode)."""
        return self.fx().get_graph_node_names(net)[1]

    def named_layers(self, net: nn.Module, model: str, pool: str = "none") -> dict[str, str]:
        """Alias -> graph node for the layers this family names itself (besides pre_logits and logits)."""
        return {}

    def classifier_name(self, net: nn.Module) -> str:
        """The module name of the final classification layer: the last linear layer, else the last convolution."""
        linears = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
        # SqueezeNet classifies with a final 1x1 convolution
        layers = linears or [name for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
        if not layers:
            raise AlexfeatError("cannot find this model's classification layer; name graph nodes instead of "
                                "pre_logits/logits")
        return layers[-1]

    def head_modules(self, net: nn.Module) -> list[str]:
        """The classification layer(s): the modules whose parameters the head group must hold."""
        return [self.classifier_name(net)]

    def replace_head(self, net: nn.Module, num_classes: int) -> None:
        """A freshly initialised classification layer for ``num_classes`` classes, in place."""
        name = self.classifier_name(net)
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        old = getattr(parent, attr)
        if isinstance(old, nn.Conv2d):  # SqueezeNet classifies with a 1x1 convolution
            new: nn.Module = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding)
        else:
            new = nn.Linear(old.in_features, num_classes)
        setattr(parent, attr, new)

    def layer_groups(self, net: nn.Module, model: str) -> dict[str, list[str]]:
        """Ordered {group: [parameter names]}, input side first, the head last (unchecked: the trainers check)."""
        return walked_groups(net, None, params_under(net, self.head_modules(net)))

    def empty(self, arch: Arch) -> nn.Module:
        """``arch`` with parameters on the meta device: its structure without memory or initialisation."""
        try:
            with torch.device("meta"):
                return self.build(arch)
        except NotImplementedError:  # a builder computing its widths with tensor ops (RegNet) needs real tensors
            register = nn.Module.register_parameter

            def on_meta(module: nn.Module, name: str, param) -> None:
                register(module, name, param if param is None else nn.Parameter(param.to("meta"), param.requires_grad))

            nn.Module.register_parameter = on_meta
            try:
                return self.build(arch)
            finally:
                nn.Module.register_parameter = register

    def with_state(self, arch: Arch, state: dict, source: str) -> nn.Module:
        """Build ``arch`` holding ``state`` (strictly), skipping the random init that loading overwrites."""
        net = self.empty(arch)
        _load_state(net, state, source, arch.model, assign=True)
        if any(t.is_meta for t in (*net.parameters(), *net.buffers())):  # a buffer the state dict does not carry
            net = self.build(arch)
            _load_state(net, state, source, arch.model)
        return net


def _load_state(net: nn.Module, state: dict, source: str, model: str, assign: bool = False) -> None:
    """Load strictly; a mismatch is one line of counts (torch's own message lists every key: kilobytes)."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [k for k in expected if k in state and tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape)]
    if missing or unexpected or resized:
        counts = [f"{len(keys)} {what}" for keys, what in ((missing, "keys missing"), (unexpected, "unexpected"),
                                                            (resized, "of another shape")) if keys]
        first = (missing or unexpected or resized)[0]
        raise AlexfeatError(f"{source} does not fit {model}: {', '.join(counts)} (first: {first}); pass --model "
                            f"with the network these weights belong to")
    net.load_state_dict(state, strict=True, assign=assign)


def params_under(net: nn.Module, modules: list[str]) -> set[str]:
    """The names of every parameter held by ``modules`` (module names of ``net``)."""
    return {f"{m}.{p}" for m in modules for p, _ in net.get_submodule(m).named_parameters()}


def walked_groups(net: nn.Module, split: tuple[str, ...] | None, head: set[str]) -> dict[str, list[str]]:
    """Groups from the module tree: the top-level blocks, the containers named by ``split``
    (None: every top-level Sequential/ModuleList) divided into their children. A norm layer
    belongs to the convolution or linear layer just before it, or else to the group after it
    (so a final norm, ConvNeXt's or ViT's, trains with the head). The unit holding any of the
    ``head`` parameters becomes the last group, "head"."""
    units: list[list] = []  # [name, params, norm params waiting to join]
    pending: list[str] = []
    after_layer = False

    def walk(module: nn.Module, prefix: str) -> None:
        nonlocal after_layer
        own = [prefix + n for n, _ in module.named_parameters(recurse=False)]
        (units[-1][1] if units else pending).extend(own)  # ViT's class token and position embedding
        for name, child in module.named_children():
            path = prefix + name
            params = [f"{path}.{n}" for n, _ in child.named_parameters()]
            if not params:
                continue
            divide = path in split if split is not None else (
                not prefix and isinstance(child, (nn.Sequential, nn.ModuleList)))
            if divide and not isinstance(child, _NORMS):
                walk(child, path + ".")
                after_layer = False
            elif isinstance(child, _NORMS) and after_layer:
                units[-1][1].extend(params)
            elif isinstance(child, _NORMS):
                pending.extend(params)
            else:
                units.append([path, pending + params])
                pending.clear()
                after_layer = isinstance(child, _LAYERS)

    walk(net, "")
    if pending:
        units[-1][1].extend(pending)
    groups: dict[str, list[str]] = {}
    head_group: list[str] = []
    for name, params in units:
        if head & set(params):
            head_group += params  # the classifier's unit: itself and the norms that joined it
        else:
            groups[name] = params
    groups["head"] = head_group
    return groups
