"""What a round optimises and how: the optimizer over its layer groups, the learning-rate schedule, the
loss, and MixUp/CutMix."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from alexfeat.trainers.config import TrainConfig

__all__ = ["make_optimizer", "lr_factor", "schedule_text", "batch_mixer", "classification_loss"]


def make_optimizer(net: nn.Module, groups: dict[str, list[str]], trainable: tuple[str, ...], epochs: int,
                   config: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimizer of a round training the ``trainable`` groups for ``epochs`` epochs, and its schedule.

    ``groups``: parameter names by layer group, input side first. One parameter group per trained layer
    group, at ``--lr`` or, with --discriminative-lr, ``--lr-decay`` times less per group below the head.
    """
    names = list(groups)
    named = dict(net.named_parameters())
    param_groups = []
    for group in trainable:
        depth = len(names) - 1 - names.index(group)  # 0 for the head
        lr = config.lr * (config.lr_decay ** depth if config.discriminative_lr else 1.0)
        param_groups.append({"params": [named[p] for p in groups[group]], "lr": lr})
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    else:
        cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        optimizer = cls(param_groups, lr=config.lr, weight_decay=config.weight_decay)
    # A function of the epoch and the round's length only, so a resumed run that extends the
    # round (--resume --epochs N) recomputes the schedule over its new length.
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, epochs))


def lr_factor(config: TrainConfig, epochs: int) -> Callable[[int], float]:
    """The learning rate of epoch ``e`` (0-based) of a round, relative to ``--lr``.

    With --swa-from the schedule runs over the epochs before it; the averaged epochs keep --swa-lr.
    """
    if config.swa_from:
        epochs = config.scheduled_epochs
    warm = min(config.warmup_epochs, epochs - 1)

    def factor(e: int) -> float:
        if config.swa_from and e >= epochs:
            return config.averaging_lr / config.lr
        if e < warm:
            return (e + 1) / (warm + 1)
        done, span = e - warm, epochs - warm
        if config.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * done / span))
        if config.lr_schedule == "step":
            return 0.1 ** (done // max(1, span // 3))
        return 1.0

    return factor


def schedule_text(config: TrainConfig) -> str:
    """The learning-rate schedule of a one-round run, in words (the log of a changed run)."""
    main = config.scheduled_epochs
    text = f"{config.lr_schedule} over epochs 1-{main}" if main else ""
    if config.swa_from:
        text += (", then " if text else "") + (f"{config.averaging_lr:g} with weights averaged from epoch "
                                               f"{config.swa_from} to {config.epochs}")
    return text


def batch_mixer(config: TrainConfig, num_classes: int) -> Callable | None:
    """MixUp and/or CutMix on a normalised batch (one of the two per batch when both are on); None: neither."""
    ops = ([v2.MixUp(alpha=config.mixup, num_classes=num_classes)] if config.mixup else []) + (
        [v2.CutMix(alpha=config.cutmix, num_classes=num_classes)] if config.cutmix else [])
    if not ops:
        return None
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy in float32 (logits may be bf16); ``labels`` class indices or mixed soft targets."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
