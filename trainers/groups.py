"""Layer groups of a network (the units of layer-wise fine-tuning), head replacement and freezing.

A group is a list of parameter names. Every trainable parameter is in exactly one group,
the groups follow the network from input to output, and the last one, the head, holds the
classification layer (with the final norm that feeds it, where the network has one).
"""

from __future__ import annotations

from torch import nn

from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.models import alexnet_layout, classifier_name

__all__ = ["layer_groups", "head_modules", "replace_head", "set_trainable", "group_sizes"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)

# torchvision families whose containers are split differently from the default (every top-level
# Sequential or ModuleList split into its children: AlexNet/VGG layers, MobileNet/EfficientNet/
# ConvNeXt/Swin stages, DenseNet blocks). ResNets keep their four stages whole; ViT splits its
# encoder into the 12 (or more) encoder layers.
_SPLIT = {
    "resnet": (), "resnext": (), "wide_resnet": (),
    "regnet": ("stem", "trunk_output"),
    "vit_": ("encoder", "encoder.layers"),
}


def layer_groups(net: nn.Module, model: str) -> dict[str, list[str]]:
    """Ordered {group: [parameter names]}, input side first, the classification head last."""
    if model == "alexnet":
        groups = _module_groups(net, alexnet_layout(_has_batch_norm(net)).modules)
    elif hasattr(net, "group_matcher") and hasattr(net, "pretrained_cfg"):
        groups = _timm_groups(net)
    else:
        groups = _walked_groups(net, _split_rule(model))
    _check(net, groups)
    return groups


def _has_batch_norm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def _module_groups(net: nn.Module, modules: dict[str, list[str]]) -> dict[str, list[str]]:
    return {g: [f"{m}.{p}" for m in mods for p, _ in net.get_submodule(m).named_parameters()]
            for g, mods in modules.items()}


def head_modules(net: nn.Module) -> list[str]:
    """The classification layer(s): timm's configured classifier (two for distilled models), else the last one."""
    cfg = getattr(net, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") if hasattr(net, "get_classifier") else None
    if names:
        names = [names] if isinstance(names, str) else list(names)
        return [n for n in names if _has_module(net, n)]
    return [classifier_name(net)]


def _has_module(net: nn.Module, name: str) -> bool:
    try:
        net.get_submodule(name)
    except AttributeError:
        return False
    return True


def _timm_groups(net: nn.Module) -> dict[str, list[str]]:
    """timm's own coarse grouping (stem, stages or blocks, head); the group holding the classifier is the head."""
    from timm.models import group_parameters

    head = _params_under(net, head_modules(net))
    parts = list(group_parameters(net, net.group_matcher(coarse=True)).values())
    groups: dict[str, list[str]] = {}
    for params in parts:
        name = "head" if head & set(params) else _group_name(params)
        groups.setdefault(name, []).extend(params)
    groups["head"] = groups.pop("head")  # last, even if timm numbered a stray group after it
    return groups


def _group_name(params: list[str]) -> str:
    """A readable name: each parameter's module path up to its first index (blocks.3.conv.weight -> blocks.3)."""
    stems: list[str] = []
    for param in params:
        parts = param.split(".")[:-1] or param.split(".")
        cut = next((i for i, p in enumerate(parts) if p.isdigit()), len(parts) - 1)
        stem = ".".join(parts[: cut + 1])
        if stem not in stems:
            stems.append(stem)
    return "+".join(stems[:3]) + ("+..." if len(stems) > 3 else "")


def _split_rule(model: str) -> tuple[str, ...] | None:
    for family, split in _SPLIT.items():
        if model.startswith(family):
            return split
    return None


def _walked_groups(net: nn.Module, split: tuple[str, ...] | None) -> dict[str, list[str]]:
    """Groups from the module tree: the top-level blocks, the containers named by ``split``
    (None: every top-level Sequential/ModuleList) divided into their children. A norm layer
    belongs to the convolution or linear layer just before it, or else to the group after it
    (so a final norm, ConvNeXt's or ViT's, trains with the head)."""
    head = _params_under(net, head_modules(net))
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


def _params_under(net: nn.Module, modules: list[str]) -> set[str]:
    return {f"{m}.{p}" for m in modules for p, _ in net.get_submodule(m).named_parameters()}


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
    if hasattr(net, "reset_classifier") and hasattr(net, "pretrained_cfg"):
        net.reset_classifier(num_classes)
        return
    name = classifier_name(net)
    parent_name, _, attr = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    old = getattr(parent, attr)
    if isinstance(old, nn.Conv2d):  # SqueezeNet classifies with a 1x1 convolution
        new: nn.Module = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding)
    else:
        new = nn.Linear(old.in_features, num_classes)
    setattr(parent, attr, new)


def set_trainable(net: nn.Module, groups: dict[str, list[str]], trainable: list[str]) -> None:
    """requires_grad on exactly the parameters of the ``trainable`` groups."""
    names = {p for g in trainable for p in groups[g]}
    for pname, param in net.named_parameters():
        param.requires_grad = pname in names
