"""torchvision's classification models (AlexNet built by alexfeat): the family of any name without a prefix."""

from __future__ import annotations

import urllib.error
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import torch
import torchvision
from torch import nn

from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.arch import Arch
from alexfeat.featurizer.backends.alexnet import build_alexnet, layout_of
from alexfeat.featurizer.backends.base import Backend, LoadedModel, params_under, walked_groups
from alexfeat.featurizer.checkpoint import load_tensors
from alexfeat.featurizer.decode import Preprocess
from alexfeat.store.weights_id import WeightsId

__all__ = ["TorchvisionBackend"]

# Families whose containers are split differently from the default (every top-level Sequential or
# ModuleList split into its children: AlexNet/VGG layers, MobileNet/EfficientNet/ConvNeXt/Swin stages,
# DenseNet blocks). ResNets keep their four stages whole; ViT splits its encoder into the 12 (or more)
# encoder layers.
_SPLIT = {
    "resnet": (), "resnext": (), "wide_resnet": (),
    "regnet": ("stem", "trunk_output"),
    "vit_": ("encoder", "encoder.layers"),
}


class TorchvisionBackend(Backend):
    """torchvision.models by name, weights from torchvision's cache or download. It takes every name that
    another family does not (so it goes last in the registry) and rejects unknown ones when building."""

    def handles(self, model: str) -> bool:
        return True

    def owns(self, net: nn.Module) -> bool:
        return True

    def build(self, arch: Arch) -> nn.Module:
        if arch.model == "alexnet":
            return build_alexnet(arch)
        _check_name(arch.model)
        kwargs = {} if arch.num_classes is None else {"num_classes": arch.num_classes}
        if arch.dropout is not None:
            kwargs["dropout"] = arch.dropout
        try:
            return torchvision.models.get_model(arch.model, weights=None, **kwargs)
        except TypeError as exc:
            raise AlexfeatError(f"{arch.model} does not accept these settings: {exc}") from None

    def load_pretrained(self, arch: Arch, download: bool) -> LoadedModel:
        _check_name(arch.model)
        weights = torchvision.models.get_model_weights(arch.model).DEFAULT
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not cached.exists() and not download:
            raise AlexfeatError(_missing_weights_message(arch.model, cached, "downloads are off"))
        try:
            # The cache file is what get_state_dict would read; loading it directly allows mmap.
            state = load_tensors(cached) if cached.exists() else weights.get_state_dict(progress=False, check_hash=True)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise AlexfeatError(_missing_weights_message(arch.model, cached, f"download failed: {exc}")) from None
        arch = replace(arch, num_classes=None)
        net = self.with_state(arch, state, str(cached))
        pre = weights.transforms()
        preprocess = Preprocess(
            resize=int(pre.resize_size[0]), crop=int(pre.crop_size[0]), mean=tuple(pre.mean), std=tuple(pre.std),
            interpolation=pre.interpolation.value,
        )
        classes = tuple(weights.meta.get("categories") or ())
        return LoadedModel(net.eval(), arch, WeightsId.pretrained(f"{type(weights).__name__}.{weights.name}"),
                           preprocess, classes)

    def fx(self) -> ModuleType:
        from torchvision.models import feature_extraction

        return feature_extraction

    def named_layers(self, net: nn.Module, model: str, pool: str = "none") -> dict[str, str]:
        """AlexNet's DeCAF/Caffe names (pool5 before flattening with ``pool`` avg or max)."""
        if model != "alexnet":
            return {}
        layout = layout_of(net)
        return {**layout.nodes, **(layout.pooled if pool != "none" else {})}

    def layer_groups(self, net: nn.Module, model: str) -> dict[str, list[str]]:
        if model == "alexnet":
            return {g: [f"{m}.{p}" for m in mods for p, _ in net.get_submodule(m).named_parameters()]
                    for g, mods in layout_of(net).modules.items()}
        split = next((s for family, s in _SPLIT.items() if model.startswith(family)), None)
        return walked_groups(net, split, params_under(net, self.head_modules(net)))


def _check_name(name: str) -> None:
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise AlexfeatError(
            f"unknown model {name!r}: use a torchvision classification model name "
            f"(e.g. alexnet, resnet50, vgg16) or timm:NAME"
        )


def _missing_weights_message(model: str, cached: Path, why: str) -> str:
    return (
        f"pretrained {model} weights are not available offline ({why}); "
        f"put {cached.name} in {cached.parent} (the torchvision cache, set by TORCH_HOME) "
        f"or pass --weights PATH to a state dict file (--weights none: random weights, for a dry run)"
    )
