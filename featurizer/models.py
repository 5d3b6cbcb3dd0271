"""Build networks by name, load their weights, and name their layers."""

from __future__ import annotations

import hashlib
import math
import urllib.error
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torchvision
from torch import nn

from alexfeat.featurizer.checkpoint import load_checkpoint, load_tensors
from alexfeat.featurizer.decode import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.model_files import existing_file
from alexfeat.featurizer.weights_id import WeightsId

__all__ = ["Arch", "LoadedModel", "load_model", "load_by_name", "build_network", "empty_network", "ALEXNET_LAYERS",
           "AlexNetLayout", "alexnet_layout", "layer_nodes", "layer_aliases", "graph_nodes", "classifier_name"]

# AlexNet's five convolutions, the one definition of its topology: (name, out channels, kernel,
# stride, padding, max-pool after). The fully connected layers fc6, fc7, fc8 follow.
_ALEXNET_CONVS = (("conv1", 64, 11, 4, 2, True), ("conv2", 192, 5, 1, 2, True), ("conv3", 384, 3, 1, 1, False),
                  ("conv4", 256, 3, 1, 1, False), ("conv5", 256, 3, 1, 1, True))


@dataclass(frozen=True)
class AlexNetLayout:
    """Where AlexNet's named layers sit in the module tree built by ``build_network``.

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
TIMM_PREFIX = "timm:"
_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alexfeat-sha256")


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

    @property
    def weights_id(self) -> WeightsId:
        return self.identity.result() if isinstance(self.identity, Future) else self.identity


def load_model(arch: Arch, weights: str = "imagenet", seed: int = 0, download: bool = True) -> LoadedModel:
    """Build ``arch`` and load ``weights``: "imagenet", "none" (seeded random init) or a file path.

    A file may be a plain state dict or an alexfeat checkpoint (whose recorded
    architecture, preprocessing and classes then win over ``arch``'s).
    Raises AlexfeatError for unknown models, missing files and unavailable weights.
    """
    if weights == "imagenet":
        return _load_pretrained(arch, download)
    if weights == "none":
        torch.manual_seed(seed)
        net = build_network(arch)
        return LoadedModel(net.eval(), arch, WeightsId.random(seed), _default_preprocess(arch, net))
    return _load_file(arch, Path(weights))


def load_by_name(model: str | None, weights: str = "imagenet", seed: int = 0, download: bool = True,
                 model_optional: bool = True) -> LoadedModel:
    """``load_model`` for a model the user may not have named. A trainer checkpoint names its own
    (``model`` None: that one, else alexnet); a named model that differs from it is refused (the
    message offers leaving --model out where the command has no default model: ``model_optional``)."""
    loaded = load_model(Arch(model=model or "alexnet"), weights, seed=seed, download=download)
    if model is not None and loaded.arch.model != model:
        leave = "leave --model out (the checkpoint names its model) or " if model_optional else ""
        raise AlexfeatError(f"{weights} is a checkpoint of {loaded.arch.model}, not {model}: {leave}"
                            f"pass --model {loaded.arch.model}")
    return loaded


def build_network(arch: Arch) -> nn.Module:
    """A randomly initialised network for ``arch`` (uses the current torch RNG)."""
    if arch.model.startswith(TIMM_PREFIX):
        timm = _import_timm()
        kwargs = {"in_chans": arch.in_chans}
        if arch.num_classes is not None:
            kwargs["num_classes"] = arch.num_classes
        if arch.dropout is not None:
            kwargs["drop_rate"] = arch.dropout
        try:
            return timm.create_model(arch.model[len(TIMM_PREFIX):], pretrained=False, **kwargs)
        except RuntimeError as exc:
            raise AlexfeatError(f"unknown timm model {arch.model[len(TIMM_PREFIX):]!r}: {exc}") from None
    if arch.model == "alexnet":
        return _alexnet(arch)
    _check_torchvision_name(arch.model)
    kwargs = {} if arch.num_classes is None else {"num_classes": arch.num_classes}
    if arch.dropout is not None:
        kwargs["dropout"] = arch.dropout
    try:
        return torchvision.models.get_model(arch.model, weights=None, **kwargs)
    except TypeError as exc:
        raise AlexfeatError(f"{arch.model} does not accept these settings: {exc}") from None


def empty_network(arch: Arch) -> nn.Module:
    """``arch`` with parameters on the meta device: its structure without memory or initialisation."""
    try:
        with torch.device("meta"):
            return build_network(arch)
    except NotImplementedError:  # a builder computing its widths with tensor ops (RegNet) needs real tensors
        register = nn.Module.register_parameter

        def on_meta(module: nn.Module, name: str, param) -> None:
            register(module, name, param if param is None else nn.Parameter(param.to("meta"), param.requires_grad))

        nn.Module.register_parameter = on_meta
        try:
            return build_network(arch)
        finally:
            nn.Module.register_parameter = register


def _alexnet(arch: Arch) -> nn.Module:
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


def _check_torchvision_name(name: str) -> None:
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise AlexfeatError(
            f"unknown model {name!r}: use a torchvision classification model name "
            f"(e.g. alexnet, resnet50, vgg16) or timm:NAME"
        )


def _import_timm():
    try:
        import timm
    except ImportError:
        raise AlexfeatError("timm models need the timm package: pip install 'alexfeat[timm]'") from None
    return timm


def _default_preprocess(arch: Arch, net: nn.Module) -> Preprocess:
    """Preprocessing for weights that do not bring their own: timm's default for the model, else ImageNet's."""
    gray = arch.in_chans == 1
    if hasattr(net, "pretrained_cfg") and not gray:
        return _timm_preprocess(net)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if not gray else ((0.449,), (0.226,))
    return Preprocess(mean=mean, std=std, grayscale=gray)


def _timm_preprocess(net: nn.Module) -> Preprocess:
    """timm's own evaluation transform for ``net`` (resize = floor(crop / crop_pct), as timm does)."""
    cfg = _import_timm().data.resolve_model_data_config(net)
    height, width = cfg["input_size"][-2:]
    if cfg.get("crop_mode", "center") != "center" or height != width:
        raise AlexfeatError(f"{type(net).__name__}'s preprocessing ({cfg.get('crop_mode')} crop of {height}x{width}) "
                            f"is not supported; pass --resize and --crop")
    return Preprocess(resize=math.floor(width / cfg["crop_pct"]), crop=int(width), mean=tuple(cfg["mean"]),
                      std=tuple(cfg["std"]), interpolation=cfg["interpolation"])


def _load_pretrained(arch: Arch, download: bool) -> LoadedModel:
    if arch.model.startswith(TIMM_PREFIX):
        return _load_timm_pretrained(arch)
    _check_torchvision_name(arch.model)
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
    net = _network_with_state(arch, state, str(cached))
    pre = weights.transforms()
    preprocess = Preprocess(
        resize=int(pre.resize_size[0]), crop=int(pre.crop_size[0]), mean=tuple(pre.mean), std=tuple(pre.std),
        interpolation=pre.interpolation.value,
    )
    classes = tuple(weights.meta.get("categories") or ())
    return LoadedModel(net.eval(), arch, WeightsId.pretrained(f"{type(weights).__name__}.{weights.name}"),
                       preprocess, classes)


def _missing_weights_message(model: str, cached: Path, why: str) -> str:
    return (
        f"pretrained {model} weights are not available offline ({why}); "
        f"put {cached.name} in {cached.parent} (the torchvision cache, set by TORCH_HOME) "
        f"or pass --weights PATH to a state dict file"
    )


def _load_timm_pretrained(arch: Arch) -> LoadedModel:
    timm = _import_timm()
    name = arch.model[len(TIMM_PREFIX):]
    try:
        net = timm.create_model(name, pretrained=True, in_chans=arch.in_chans)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise AlexfeatError(f"unknown timm model {name!r}") from None
        raise AlexfeatError(f"could not load pretrained weights for timm:{name} ({exc}); pass --weights PATH") from None
    except (OSError, ValueError, urllib.error.URLError) as exc:
        raise AlexfeatError(
            f"pretrained weights for timm:{name} are not available offline ({exc}); pass --weights PATH"
        ) from None
    tag = net.pretrained_cfg.get("tag")
    weights_id = WeightsId.pretrained(f"timm:{name}" + (f".{tag}" if tag else ""))
    return LoadedModel(net.eval(), arch, weights_id, _timm_preprocess(net))


def _load_file(arch: Arch, path: Path) -> LoadedModel:
    existing_file(path, "weights file", "use --weights imagenet, none, or a file path")
    # Hashing 244 MB takes ~0.16 s; hashlib releases the GIL, so it overlaps loading and tracing.
    identity = _HASHER.submit(lambda: WeightsId.file(path.name, _sha256(path)))
    data = load_checkpoint(path)
    state = data["state_dict"]
    if "arch" in data:
        arch = Arch.from_dict(data["arch"])
        net = _network_with_state(arch, state, str(path))
        return LoadedModel(net.eval(), arch, identity, Preprocess.from_dict(data.get("preprocess", {})),
                           tuple(data.get("classes", ())))
    if arch.num_classes is None:
        arch = replace(arch, num_classes=_infer_num_classes(state, arch))
    if arch.model == "alexnet" and any(k.endswith("running_mean") for k in state):
        arch = replace(arch, batch_norm=True)  # exported from train-scratch --batch-norm
    net = _network_with_state(arch, state, str(path))
    return LoadedModel(net.eval(), arch, identity, _default_preprocess(arch, net))


def _infer_num_classes(state: dict, arch: Arch) -> int | None:
    """A plain state dict may carry a replaced head; read its size from the last 2-D weight."""
    weights = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    return int(weights[-1].shape[0]) if weights else None


def _network_with_state(arch: Arch, state: dict, source: str) -> nn.Module:
    """Build ``arch`` holding ``state``, skipping the random init that loading overwrites."""
    net = empty_network(arch)
    _load_state(net, state, source, arch.model, assign=True)
    if any(t.is_meta for t in (*net.parameters(), *net.buffers())):  # a buffer the state dict does not carry
        net = build_network(arch)
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def classifier_name(net: nn.Module) -> str:
    """The module name of the network's final classification layer."""
    if hasattr(net, "get_classifier") and hasattr(net, "pretrained_cfg"):
        cls = net.pretrained_cfg.get("classifier")
        if cls:
            return cls
    linears = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    # SqueezeNet classifies with a final 1x1 convolution
    layers = linears or [name for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if not layers:
        raise AlexfeatError("cannot find this model's classification layer; name graph nodes instead of pre_logits/logits")
    return layers[-1]


def graph_nodes(net: nn.Module) -> list[str]:
    """The feature-extraction graph node names of ``net`` (eval mode)."""
    return _fx(net).get_graph_node_names(net)[1]


def _fx(net: nn.Module):
    if hasattr(net, "pretrained_cfg"):
        from timm.models import _features_fx as timm_fx  # traces timm's custom layers correctly

        return timm_fx
    from torchvision.models import feature_extraction

    return feature_extraction


def layer_nodes(net: nn.Module, model: str, layers: list[str], pool: str = "none") -> dict[str, str]:
    """Map each requested layer to its graph node name.

    A layer is an alias, a graph node name, or a module name (``layer4``, ``blocks.6``: the
    names the trainers' group listing prints), which means the module's output node: the
    last graph node under its prefix. With ``pool`` avg or max, AlexNet's ``pool5`` is the
    256-channel map before flattening, so that pooling reduces it like every other map.
    """
    nodes = graph_nodes(net)
    aliases = layer_aliases(net, model)
    if model == "alexnet" and pool != "none":
        aliases.update(alexnet_layout(_has_batch_norm(net)).pooled)
    modules = {name for name, _ in net.named_modules() if name}
    resolved = {}
    for layer in layers:
        node = aliases.get(layer, layer)
        if node not in nodes and node in modules:
            node = next((n for n in reversed(nodes) if n.startswith(node + ".")), node)
        if node not in nodes:
            raise AlexfeatError(
                f"unknown layer {layer!r} for {model}: use one of {', '.join(aliases)}, a graph node or a module "
                f"name (alexfeat layers --model {model} --all lists them)"
            )
        resolved[layer] = node
    return resolved


def _has_batch_norm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def layer_aliases(net: nn.Module, model: str) -> dict[str, str]:
    """Alias -> node for ``model`` (AlexNet names, pre_logits, logits)."""
    nodes = graph_nodes(net)
    aliases = dict(alexnet_layout(_has_batch_norm(net)).nodes) if model == "alexnet" else {}
    head = classifier_name(net)
    if head in nodes:
        aliases.setdefault("pre_logits", nodes[nodes.index(head) - 1])
        aliases.setdefault("logits", head)
    return aliases
