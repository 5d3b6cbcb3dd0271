"""How an epoch trains and evaluates: on images through the whole network (``ImageStep``), or through the
head alone on activations of the frozen trunk computed once (``FeatureStep``)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from alexfeat.featurizer.decode import Preprocess
from alexfeat.featurizer.layers import LayerExtractor
from alexfeat.featurizer.models import layer_nodes
from alexfeat.progress import progress_bar
from alexfeat.trainers.averaging import WeightAverage
from alexfeat.trainers.config import TrainConfig
from alexfeat.trainers.data import Split, TrainData, eval_batches, eval_crop, train_loader
from alexfeat.trainers.groups import head_modules
from alexfeat.trainers.optim import batch_mixer, classification_loss

__all__ = ["StepContext", "ImageStep", "FeatureStep"]


@dataclass(frozen=True)
class StepContext:
    """What the steps of a run read: its settings, data and network (the same objects all run long)."""

    config: TrainConfig
    data: TrainData
    pre: Preprocess
    device: torch.device
    net: nn.Module  # the network being trained, channels-last on ``device``
    normalize: nn.Module  # uint8 images to the network's input
    bf16: bool  # forward passes under bfloat16 autocast
    augment_workers: int  # processes that augment the training images

    def autocast(self) -> ContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()


class ImageStep:
    """Train and evaluate the whole network on images; ``frozen``: modules kept in eval mode.

    ``train`` runs one epoch and ``evaluate`` one split, each returning (mean loss, accuracy); ``FeatureStep``
    has the same two.
    """

    def __init__(self, ctx: StepContext, frozen: list[nn.Module]):
        self.ctx, self.frozen = ctx, list(frozen)
        if ctx.config.mode == "finetune" and not ctx.config.train_bn:
            # Small fine-tuning batches of few classes give poor batch statistics; re-estimating them
            # shifts the pretrained features (seen: EfficientNet-Lite0 fell from 98.8% to 94.4%).
            # Batch-norm layers stay in inference mode; their scale and shift still train.
            self.frozen += [m for m in ctx.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def _augmented(self, generator: torch.Generator):
        """One epoch of augmented training batches (uint8 images, labels), in the order ``generator`` draws."""
        ctx, config = self.ctx, self.ctx.config
        return train_loader(ctx.data.train, ctx.pre, config.augment, config.batch_size, config.balanced,
                            ctx.augment_workers, generator, ctx.device.type == "cuda")

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        ctx = self.ctx
        x = ctx.normalize(images.to(ctx.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last)

    def train(self, optimizer, generator: torch.Generator, description: str) -> tuple[float, float]:
        ctx = self.ctx
        ctx.net.train()
        for module in self.frozen:
            module.eval()  # frozen layers (and, fine-tuning, batch-norm layers) keep their statistics
        batches = ((self._inputs(x), y.to(ctx.device, non_blocking=True)) for x, y in self._augmented(generator))
        mix = batch_mixer(ctx.config, len(ctx.data.classes))
        if mix is not None:
            batches = (mix(x, y) for x, y in batches)
        return _run_train(batches, ctx.net, optimizer, ctx, description)

    @torch.inference_mode()
    def evaluate(self, split: str, net: nn.Module | None = None) -> tuple[float, float]:
        """On the ``split`` ("val" or "test") images; ``net``: the averaged network instead of the trained one."""
        ctx = self.ctx
        net = ctx.net if net is None else net
        net.eval()
        data = ctx.data.val if split == "val" else ctx.data.test
        return _run_eval(eval_batches(data, ctx.config.batch_size), lambda x: net(self._inputs(x)), ctx)

    def estimate_batch_norm(self, average: WeightAverage, generator: torch.Generator) -> None:
        """The averaged network's batch-norm statistics, on one more pass over the augmented training images."""
        ctx = self.ctx

        def forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
            with ctx.autocast():
                return net(x)

        # Batch-norm layers kept in inference mode while training (fine-tuning without --train-bn, frozen
        # groups) keep their statistics in the average too: the weights were trained against those.
        kept = {name for name, module in ctx.net.named_modules() if any(module is m for m in self.frozen)}
        average.estimate_batch_norm((self._inputs(x) for x, _ in self._augmented(generator)), forward, kept)


class FeatureStep:
    """Train and evaluate only the head, on activations of the frozen trunk computed once (at construction)."""

    def __init__(self, ctx: StepContext):
        self.ctx = ctx
        self.head = ctx.net.get_submodule(head_modules(ctx.net)[0])
        ctx.net.eval()
        nodes = layer_nodes(ctx.net, ctx.config.model, ["pre_logits"])
        extractor = LayerExtractor(ctx.net, nodes, ctx.pre).to(ctx.device)
        self.features = {}
        for split in ("train", "val", "test"):
            data: Split | None = getattr(ctx.data, split)
            if data is not None:
                images = data.images if split != "train" else [eval_crop(i, ctx.pre) for i in data.images]
                self.features[split] = (_activations(extractor, images, ctx), data.labels.to(ctx.device))

    def train(self, optimizer, generator: torch.Generator, description: str) -> tuple[float, float]:
        ctx = self.ctx
        self.head.train()
        x, y = self.features["train"]
        if ctx.config.balanced:
            weights = (1.0 / torch.bincount(y.cpu()).double())[y.cpu()]
            order = torch.multinomial(weights, len(y), replacement=True, generator=generator)
        else:
            order = torch.randperm(len(y), generator=generator)
        batches = ((x[idx.to(ctx.device)], y[idx.to(ctx.device)]) for idx in order.split(ctx.config.batch_size))
        return _run_train(batches, self.head, optimizer, ctx, description)

    @torch.inference_mode()
    def evaluate(self, split: str, net: None = None) -> tuple[float, float]:
        """``net`` is always None: weight averaging never trains on cached activations."""
        self.head.eval()
        x, y = self.features[split]
        batch = self.ctx.config.batch_size
        return _run_eval(((x[i:i + batch], y[i:i + batch]) for i in range(0, len(y), batch)), self.head, self.ctx)


@torch.inference_mode()
def _activations(extractor: LayerExtractor, images: list[torch.Tensor], ctx: StepContext) -> torch.Tensor:
    batch = ctx.config.batch_size
    parts = []
    for start in range(0, len(images), batch):
        x = torch.stack(images[start:start + batch]).to(ctx.device).contiguous(memory_format=torch.channels_last)
        with ctx.autocast():
            parts.append(extractor(x)["pre_logits"].float())
    return torch.cat(parts).clone()  # a normal tensor (not an inference tensor), usable by autograd


def _run_train(batches, forward: Callable, optimizer, ctx: StepContext, description: str) -> tuple[float, float]:
    total_loss, correct, seen = 0.0, 0, 0
    with progress_bar(len(ctx.data.train.labels), description, not ctx.config.quiet) as advance:
        for x, y in batches:
            y = y.to(ctx.device, non_blocking=True)
            with ctx.autocast():
                logits = forward(x)
            loss = classification_loss(logits, y, ctx.config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == (y.argmax(1) if y.ndim > 1 else y)).sum())  # mixed: the major label
            seen += len(y)
            advance(len(y))
    return total_loss / seen, correct / seen


def _run_eval(batches: Iterator, forward: Callable, ctx: StepContext) -> tuple[float, float]:
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in batches:
        y = y.to(ctx.device)
        with ctx.autocast():
            logits = forward(x)
        total_loss += float(F.cross_entropy(logits.float(), y)) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return total_loss / seen, correct / seen
