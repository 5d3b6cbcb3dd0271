"""timm's models, named ``timm:NAME``. timm is optional and slow to import, so it is imported where used."""

from __future__ import annotations

import math
import urllib.error
from types import ModuleType

from torch import nn

from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.arch import Arch
from alexfeat.featurizer.backends.base import Backend, LoadedModel, params_under
from alexfeat.featurizer.decode import Preprocess
from alexfeat.store.weights_id import WeightsId

__all__ = ["TimmBackend", "TIMM_PREFIX"]

TIMM_PREFIX = "timm:"


class TimmBackend(Backend):
    """timm.create_model by name; the pretrained config each network carries gives its preprocessing,
    classifier and coarse layer groups."""

    def handles(self, model: str) -> bool:
        return model.startswith(TIMM_PREFIX)

    def owns(self, net: nn.Module) -> bool:
        return hasattr(net, "pretrained_cfg")

    def build(self, arch: Arch) -> nn.Module:
        timm = _import_timm()
        kwargs = {"in_chans": arch.in_chans}
        if arch.num_classes is not None:
            kwargs["num_classes"] = arch.num_classes
        if arch.dropout is not None:
            kwargs["drop_rate"] = arch.dropout
        try:
            return timm.create_model(_name(arch), pretrained=False, **kwargs)
        except RuntimeError as exc:
            raise AlexfeatError(f"unknown timm model {_name(arch)!r}: {exc}") from None

    def load_pretrained(self, arch: Arch, download: bool) -> LoadedModel:
        timm = _import_timm()
        name = _name(arch)
        try:
            net = timm.create_model(name, pretrained=True, in_chans=arch.in_chans)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise AlexfeatError(f"unknown timm model {name!r}") from None
            raise AlexfeatError(f"could not load pretrained weights for timm:{name} ({exc}); "
                                f"pass --weights PATH") from None
        except (OSError, ValueError, urllib.error.URLError) as exc:
            raise AlexfeatError(
                f"pretrained weights for timm:{name} are not available offline ({exc}); pass --weights PATH "
                f"(--weights none: random weights, for a dry run)"
            ) from None
        tag = net.pretrained_cfg.get("tag")
        weights_id = WeightsId.pretrained(f"timm:{name}" + (f".{tag}" if tag else ""))
        return LoadedModel(net.eval(), arch, weights_id, _timm_preprocess(net))

    def default_preprocess(self, arch: Arch, net: nn.Module) -> Preprocess:
        """timm's default evaluation transform for the model (ImageNet's gray level for 1 channel)."""
        return super().default_preprocess(arch, net) if arch.in_chans == 1 else _timm_preprocess(net)

    def preprocess_origin(self, arch: Arch, net: nn.Module) -> str:
        """A tagged name (``timm:efficientnet_lite0.ra_in1k``) takes that tag's config; an untagged one, timm's
        default tag for the architecture."""
        if arch.in_chans == 1:
            return super().preprocess_origin(arch, net)
        name, tag = _name(arch), net.pretrained_cfg.get("tag")
        if "." in name or not tag:
            return f"timm's config of {name}"
        return f"timm's config of {name}.{tag}, its default tag (name another as timm:{name}.TAG)"

    def fx(self) -> ModuleType:
        from timm.models import _features_fx  # traces timm's custom layers correctly

        return _features_fx

    def classifier_name(self, net: nn.Module) -> str:
        """timm's configured classifier, else the generic lookup (a distilled model configures two: their tuple)."""
        cls = net.pretrained_cfg.get("classifier") if hasattr(net, "get_classifier") else None
        return cls or super().classifier_name(net)

    def head_modules(self, net: nn.Module) -> list[str]:
        """timm's configured classifier(s): two for distilled models."""
        names = (net.pretrained_cfg or {}).get("classifier") if hasattr(net, "get_classifier") else None
        if names:
            names = [names] if isinstance(names, str) else list(names)
            return [n for n in names if _has_module(net, n)]
        return super().head_modules(net)

    def replace_head(self, net: nn.Module, num_classes: int) -> None:
        if hasattr(net, "reset_classifier"):
            net.reset_classifier(num_classes)
        else:
            super().replace_head(net, num_classes)

    def layer_groups(self, net: nn.Module, model: str) -> dict[str, list[str]]:
        """timm's own coarse grouping (stem, stages or blocks, head); the group holding the classifier is the head."""
        if not hasattr(net, "group_matcher"):
            return super().layer_groups(net, model)
        from timm.models import group_parameters

        head = params_under(net, self.head_modules(net))
        groups: dict[str, list[str]] = {}
        for params in group_parameters(net, net.group_matcher(coarse=True)).values():
            name = "head" if head & set(params) else _group_name(params)
            groups.setdefault(name, []).extend(params)
        groups["head"] = groups.pop("head")  # last, even if timm numbered a stray group after it
        return groups


def _name(arch: Arch) -> str:
    return arch.model[len(TIMM_PREFIX):]


def _import_timm() -> ModuleType:
    try:
        import timm
    except ImportError:
        raise AlexfeatError("timm models need the timm package: pip install 'alexfeat[timm]'") from None
    return timm


def _timm_preprocess(net: nn.Module) -> Preprocess:
    """timm's own evaluation transform for ``net`` (resize = floor(crop / crop_pct), as timm does)."""
    cfg = _import_timm().data.resolve_model_data_config(net)
    height, width = cfg["input_size"][-2:]
    if cfg.get("crop_mode", "center") != "center" or height != width:
        raise AlexfeatError(f"{type(net).__name__}'s preprocessing ({cfg.get('crop_mode')} crop of {height}x{width}) "
                            f"is not supported; pass --resize and --crop")
    return Preprocess(resize=math.floor(width / cfg["crop_pct"]), crop=int(width), mean=tuple(cfg["mean"]),
                      std=tuple(cfg["std"]), interpolation=cfg["interpolation"])


def _has_module(net: nn.Module, name: str) -> bool:
    try:
        net.get_submodule(name)
    except AttributeError:
        return False
    return True


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
