"""Build networks by name, load their weights, and name their layers."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from alexfeat.featurizer.arch import Arch
from alexfeat.featurizer.backends import LoadedModel, backend_for, backend_of
from alexfeat.featurizer.checkpoint import Checkpoint
from alexfeat.featurizer.decode import Preprocess
from alexfeat.errors import AlexfeatError
from alexfeat.paths import existing_file
from alexfeat.store.weights_id import WeightsId

__all__ = ["load_model", "load_by_name", "build_network", "empty_network", "layer_nodes", "layer_aliases",
           "graph_nodes", "classifier_name"]

# Hashing runs beside loading and tracing (see _load_file).
_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alexfeat-sha256")


def load_model(arch: Arch, weights: str = "imagenet", seed: int = 0, download: bool = True) -> LoadedModel:
    """Build ``arch`` and load ``weights``: "imagenet", "none" (seeded random init) or a file path.

    A file may be a plain state dict or an alexfeat checkpoint (whose recorded
    architecture, preprocessing and classes then win over ``arch``'s).
    Raises AlexfeatError for unknown models, missing files and unavailable weights.
    """
    backend = backend_for(arch.model)
    if weights == "imagenet":
        return backend.load_pretrained(arch, download)
    if weights == "none":
        torch.manual_seed(seed)
        net = backend.build(arch)
        return LoadedModel(net.eval(), arch, WeightsId.random(seed), backend.default_preprocess(arch, net))
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
    return backend_for(arch.model).build(arch)


def empty_network(arch: Arch) -> nn.Module:
    """``arch`` with parameters on the meta device: its structure without memory or initialisation."""
    return backend_for(arch.model).empty(arch)


def _load_file(arch: Arch, path: Path) -> LoadedModel:
    existing_file(path, "weights file", "use --weights imagenet, none, or a file path")
    # Hashing 244 MB takes ~0.16 s; hashlib releases the GIL, so it overlaps loading and tracing.
    identity = _HASHER.submit(lambda: WeightsId.file(path.name, _sha256(path)))
    ckpt = Checkpoint.read(path)
    state = ckpt.state_dict
    if ckpt.arch is not None:
        arch = ckpt.arch
        net = _network_with_state(arch, state, str(path))
        return LoadedModel(net.eval(), arch, identity, ckpt.preprocess or Preprocess(), ckpt.classes or ())
    if arch.num_classes is None:
        arch = replace(arch, num_classes=_infer_num_classes(state, arch))
    if arch.model == "alexnet" and any(k.endswith("running_mean") for k in state):
        arch = replace(arch, batch_norm=True)  # exported from train-scratch --batch-norm
    net = _network_with_state(arch, state, str(path))
    backend = backend_for(arch.model)
    return LoadedModel(net.eval(), arch, identity, backend.default_preprocess(arch, net),
                       preprocess_origin=backend.preprocess_origin(arch, net))


def _infer_num_classes(state: dict, arch: Arch) -> int | None:
    """A plain state dict may carry a replaced head; read its size from the last 2-D weight."""
    weights = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    return int(weights[-1].shape[0]) if weights else None


def _network_with_state(arch: Arch, state: dict, source: str) -> nn.Module:
    """Build ``arch`` holding ``state`` (strictly loaded), skipping the random init that loading overwrites."""
    return backend_for(arch.model).with_state(arch, state, source)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def classifier_name(net: nn.Module) -> str:
    """The module name of the network's final classification layer."""
    return backend_of(net).classifier_name(net)


def graph_nodes(net: nn.Module) -> list[str]:
    """The feature-extraction graph node names of ``net`` (eval mode)."""
    return backend_of(net).graph_nodes(net)


def layer_nodes(net: nn.Module, model: str, layers: list[str], pool: str = "none") -> dict[str, str]:
    """Map each requested layer to its graph node name.

    A layer is an alias, a graph node name, or a module name (``layer4``, ``blocks.6``: the
    names the trainers' group listing prints), which means the module's output node: the
    last graph node under its prefix. With ``pool`` avg or max, AlexNet's ``pool5`` is the
    256-channel map before flattening, so that pooling reduces it like every other map.
    """
    nodes = graph_nodes(net)  # traces the network: once here, and handed on
    aliases = _aliases(net, model, nodes, pool)
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


def layer_aliases(net: nn.Module, model: str) -> dict[str, str]:
    """Alias -> node for ``model`` (the family's own names, such as AlexNet's, then pre_logits and logits)."""
    return _aliases(net, model, graph_nodes(net))


def _aliases(net: nn.Module, model: str, nodes: list[str], pool: str = "none") -> dict[str, str]:
    aliases = backend_for(model).named_layers(net, model, pool)
    head = classifier_name(net)
    if head in nodes:
        aliases.setdefault("pre_logits", nodes[nodes.index(head) - 1])
        aliases.setdefault("logits", head)
    return aliases
