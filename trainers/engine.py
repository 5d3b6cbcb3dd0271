"""The training engine of both trainers: rounds of epochs, per-epoch checkpoints, exact resume.

A run is a list of rounds; each round trains a set of layer groups for some epochs with
a fresh optimizer and learning-rate schedule. Training from scratch is one round over
everything; layer-wise fine-tuning trains the new head first and unfreezes one more
group per round. Every epoch is seeded from (seed, epoch) and the model, optimizer and
scheduler are checkpointed after it, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from alexfeat.featurizer.decode import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.extract import LayerExtractor, Normalize
from alexfeat.featurizer.device import default_workers, resolve_device
from alexfeat.featurizer.network import apply_overrides
from alexfeat.featurizer.models import Arch, build_network, layer_nodes, load_model
from alexfeat.featurizer.progress import progress_bar, stderr
from alexfeat.trainers.config import TrainConfig
from alexfeat.trainers.data import Split, TrainData, eval_batches, eval_crop, prepare_data, train_loader
from alexfeat.trainers.groups import layer_groups, replace_head, set_trainable
from alexfeat.trainers.plots import plot_curves
from alexfeat.trainers.run_dir import RunDir

__all__ = ["Round", "TrainResult", "train", "resume", "plan_rounds", "list_groups"]


@dataclass(frozen=True)
class Round:
    index: int  # 1-based
    trainable: tuple[str, ...]  # layer groups trained in this round
    epochs: int


@dataclass
class TrainResult:
    run: RunDir
    epochs: int
    best_epoch: int
    best_metric: str
    best_value: float
    last: dict

    def summary(self) -> str:
        last = self.last
        val = f", val acc {last['val_acc']:.4f}" if last.get("val_acc") is not None else ""
        return (f"trained {self.epochs} epochs: test acc {last['test_acc']:.4f}{val} at the last epoch; "
                f"best {self.best_metric} {self.best_value:.4f} at epoch {self.best_epoch}; "
                f"{self.run.path} holds best.pt, last.pt, metrics.csv, curves.png")


def plan_rounds(config: TrainConfig, groups: list[str]) -> list[Round]:
    """The rounds of a run; ``groups`` ordered input side first, head last."""
    if config.mode == "scratch" or config.schedule == "full":
        return [Round(1, tuple(groups), config.epochs)]
    if config.schedule == "head":
        return [Round(1, (groups[-1],), config.epochs)]
    if config.until is not None and config.until not in groups:
        raise AlexfeatError(f"--until {config.until!r} is not a layer group of {config.model}: "
                            f"use one of {', '.join(groups)}")
    deepest = groups.index(config.until) if config.until else 0
    return [Round(k, tuple(groups[start:]), config.epochs_per_round)
            for k, start in enumerate(range(len(groups) - 1, deepest - 1, -1), 1)]


def list_groups(model: str) -> dict[str, list[str]]:
    """The layer groups of ``model`` (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        net = build_network(Arch(model=model))
    return layer_groups(net, model)


def train(config: TrainConfig) -> TrainResult:
    """Start a new run in ``config.out``."""
    device = resolve_device(config.device)
    RunDir.check_new(config.out)  # before minutes of decoding, not after
    if config.mode == "finetune":
        plan_rounds(config, list(list_groups(config.model)))  # an unknown --until fails now, too
    data, net, arch, pre = _build(config, device)
    run = RunDir.create(config.out, config)
    run.write_skipped(data.skipped)
    trainer = _Trainer(config, run, net, arch, pre, data, device)
    trainer.save(round_=1, round_epoch=0, epoch=0, optimizer=None, scheduler=None, row={}, best=False)
    return trainer.fit(start_round=1, start_epoch=1, optimizer_state=None)


def resume(run_path: Path, **changes) -> TrainResult:
    """Continue an interrupted run from its last checkpoint, with its saved settings."""
    run = RunDir.open(run_path)
    config = run.config(**changes)
    device = resolve_device(config.device)
    ckpt = run.load_last()
    arch = Arch.from_dict(ckpt["arch"])
    net = build_network(arch)
    net.load_state_dict(ckpt["state_dict"])
    pre = Preprocess.from_dict(ckpt["preprocess"])
    data = prepare_data(config.train_dir, config.test_dir, pre, config.val_split, config.seed,
                        _workers(config, device), config.cache, config.quiet)
    trainer = _Trainer(config, run, net, arch, pre, data, device)
    trainer.best = ckpt.get("best") or trainer.best
    run.truncate_metrics(ckpt["epoch"])
    round_, round_epoch = ckpt["round"], ckpt["round_epoch"]
    if round_epoch >= trainer.rounds[round_ - 1].epochs:
        return trainer.fit(round_ + 1, 1, None)
    state = {"optimizer": ckpt["optimizer"], "scheduler": ckpt["scheduler"]} if ckpt.get("optimizer") else None
    return trainer.fit(round_, round_epoch + 1, state)


def _workers(config: TrainConfig, device: torch.device) -> int:
    return default_workers(device) if config.workers is None else config.workers


def _build(config: TrainConfig, device: torch.device) -> tuple[TrainData, nn.Module, Arch, Preprocess]:
    """The data and the initial network (random for scratch, pretrained with a new head for finetune)."""
    if config.mode == "scratch":
        if config.model != "alexnet" and config.width_mult != 1.0:
            raise AlexfeatError("--width-mult applies to alexnet only")
        size = config.image_size or 224
        channels = 1 if config.grayscale else 3
        mean = config.mean or ((0.449,) if config.grayscale else IMAGENET_MEAN)
        std = config.std or ((0.226,) if config.grayscale else IMAGENET_STD)
        pre = Preprocess(resize=Preprocess().resize_for(size), crop=size, mean=tuple(mean), std=tuple(std),
                         mode=config.resize_mode, grayscale=config.grayscale)
        _check_channels(pre)
        data = prepare_data(config.train_dir, config.test_dir, pre, config.val_split, config.seed,
                            _workers(config, device), config.cache, config.quiet)
        arch = Arch(model=config.model, num_classes=len(data.classes), width_mult=config.width_mult,
                    in_chans=channels, dropout=config.dropout if config.model == "alexnet" else None)
        torch.manual_seed(config.seed)
        return data, build_network(arch), arch, pre
    loaded = load_model(Arch(model=config.model), config.weights, seed=config.seed)
    crop = config.image_size
    pre = apply_overrides(loaded.preprocess, crop=crop, mean=config.mean, std=config.std)
    pre = replace(pre, mode=config.resize_mode)
    data = prepare_data(config.train_dir, config.test_dir, pre, config.val_split, config.seed,
                        _workers(config, device), config.cache, config.quiet)
    torch.manual_seed(config.seed)
    replace_head(loaded.net, len(data.classes))
    return data, loaded.net, replace(loaded.arch, num_classes=len(data.classes)), pre


def _check_channels(pre: Preprocess) -> None:
    if len(pre.mean) != pre.channels or len(pre.std) != pre.channels:
        raise AlexfeatError(f"--mean and --std need {pre.channels} values for {pre.channels}-channel input")


class _Trainer:
    """One run's state between epochs; ``fit`` runs the remaining rounds."""

    def __init__(self, config: TrainConfig, run: RunDir, net: nn.Module, arch: Arch, pre: Preprocess,
                 data: TrainData, device: torch.device):
        self.config, self.run, self.arch, self.pre, self.data, self.device = config, run, arch, pre, data, device
        self.net = net.to(device).to(memory_format=torch.channels_last)
        self.normalize = Normalize(pre).to(device)
        self.groups = layer_groups(net, config.model)
        self.rounds = plan_rounds(config, list(self.groups))
        self.metric = "val_acc" if data.val is not None else "test_acc"
        self.best = {"metric": self.metric, "value": -1.0, "epoch": 0}
        self.total_epochs = sum(r.epochs for r in self.rounds)

    def fit(self, start_round: int, start_epoch: int, optimizer_state: dict | None) -> TrainResult:
        epoch = sum(r.epochs for r in self.rounds[: start_round - 1]) + start_epoch - 1
        row: dict = {}
        try:
            for rnd in self.rounds[start_round - 1:]:
                first = start_epoch if rnd.index == start_round else 1
                optimizer, scheduler = self._optimizer(rnd)
                if optimizer_state is not None and rnd.index == start_round:
                    optimizer.load_state_dict(optimizer_state["optimizer"])
                    scheduler.load_state_dict(optimizer_state["scheduler"])
                step = self._head_on_cached_activations(rnd) or _ImageStep(self, rnd)
                for round_epoch in range(first, rnd.epochs + 1):
                    epoch += 1
                    row = self._epoch(rnd, round_epoch, epoch, step, optimizer, scheduler)
        except KeyboardInterrupt:
            plot_curves(self.run)
            raise KeyboardInterrupt(f"interrupted: {self.run.last_path} holds the last finished epoch; "
                                    f"continue with --resume {self.run.path}") from None
        plot_curves(self.run)
        if not row:
            rows = self.run.metrics()
            row = rows[-1] if rows else {}
        return TrainResult(self.run, epoch, self.best["epoch"], self.metric, self.best["value"], row)

    def _epoch(self, rnd: Round, round_epoch: int, epoch: int, step, optimizer, scheduler) -> dict:
        started = time.perf_counter()
        torch.manual_seed(self.config.seed * 100_003 + epoch)  # dropout, augmentation: same on resume
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        lr = optimizer.param_groups[-1]["lr"]
        description = f"epoch {epoch}/{self.total_epochs}" + (f" round {rnd.index}" if len(self.rounds) > 1 else "")
        train_loss, train_acc = step.train(optimizer, generator, description)
        scheduler.step()
        row = {"epoch": epoch, "round": rnd.index, "lr": lr, "train_loss": train_loss, "train_acc": train_acc}
        if self.data.val is not None:
            row["val_loss"], row["val_acc"] = step.evaluate("val")
        row["test_loss"], row["test_acc"] = step.evaluate("test")
        row["seconds"] = round(time.perf_counter() - started, 2)
        best = row[self.metric] > self.best["value"]
        if best:
            self.best = {"metric": self.metric, "value": row[self.metric], "epoch": epoch}
        with _interrupts_deferred():  # a Ctrl-C here must not separate the metrics row from its checkpoint
            self.run.append_metrics(row)
            self.save(rnd.index, round_epoch, epoch, optimizer, scheduler, row, best)
        if not self.config.quiet:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k.endswith(("loss", "acc")))
            stderr.print(f"epoch {epoch}: {shown}  ({row['seconds']:.1f} s)", highlight=False, soft_wrap=True)
        return row

    def save(self, round_: int, round_epoch: int, epoch: int, optimizer, scheduler, row: dict, best: bool) -> None:
        payload = {
            "arch": self.arch.to_dict(),
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()},
            "preprocess": asdict(self.pre),
            "classes": list(self.data.classes),
            "epoch": epoch, "round": round_, "round_epoch": round_epoch,
            "optimizer": optimizer.state_dict() if optimizer else None,
            "scheduler": scheduler.state_dict() if scheduler else None,
            "best": self.best,
            "metrics": row,
        }
        self.run.save_checkpoint(payload, best)

    def _optimizer(self, rnd: Round):
        set_trainable(self.net, self.groups, list(rnd.trainable))
        config, names = self.config, list(self.groups)
        param_groups = []
        for group in rnd.trainable:
            depth = len(names) - 1 - names.index(group)  # 0 for the head
            lr = config.lr * (config.lr_decay ** depth if config.discriminative_lr else 1.0)
            params = [p for m in self.groups[group] for p in self.net.get_submodule(m).parameters()]
            param_groups.append({"params": params, "lr": lr})
        if config.optimizer == "sgd":
            optimizer = torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum,
                                        weight_decay=config.weight_decay)
        else:
            cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
            optimizer = cls(param_groups, lr=config.lr, weight_decay=config.weight_decay)
        if config.lr_schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=rnd.epochs)
        elif config.lr_schedule == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, rnd.epochs // 3), gamma=0.1)
        else:
            scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        return optimizer, scheduler

    def _frozen_modules(self, rnd: Round) -> list[nn.Module]:
        return [self.net.get_submodule(m) for g, mods in self.groups.items() if g not in rnd.trainable for m in mods]

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()

    def _head_on_cached_activations(self, rnd: Round) -> "_FeatureStep | None":
        """Head-only rounds without augmentation: compute the frozen trunk once, train the head on it."""
        config = self.config
        if config.mode != "finetune" or rnd.trainable != (list(self.groups)[-1],) or config.augment != "none":
            return None
        return _FeatureStep(self)


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT until the block ends, then raise KeyboardInterrupt if one came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *_: received.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)


class _ImageStep:
    """Train and evaluate the whole network on images."""

    def __init__(self, trainer: _Trainer, rnd: Round):
        self.t, self.frozen = trainer, trainer._frozen_modules(rnd)
        if trainer.config.mode == "finetune" and not trainer.config.train_bn:
            # Small fine-tuning batches of few classes give poor batch statistics; re-estimating them
            # shifts the pretrained features (seen: EfficientNet-Lite0 fell from 98.8% to 94.4%).
            # Batch-norm layers stay in inference mode; their scale and shift still train.
            self.frozen += [m for m in trainer.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        t = self.t
        x = t.normalize(images.to(t.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last)

    def train(self, optimizer, generator: torch.Generator, description: str) -> tuple[float, float]:
        t, config = self.t, self.t.config
        t.net.train()
        for module in self.frozen:
            module.eval()  # frozen layers (and, fine-tuning, batch-norm layers) keep their statistics
        loader = train_loader(t.data.train, t.pre, config.augment, config.batch_size, config.balanced,
                              _workers(config, t.device), generator, t.device.type == "cuda")
        return _run_train(loader, lambda x: t.net(self._inputs(x)), optimizer, t, description)

    @torch.inference_mode()
    def evaluate(self, split: str) -> tuple[float, float]:
        t = self.t
        t.net.eval()
        data = t.data.val if split == "val" else t.data.test
        return _run_eval(eval_batches(data, t.config.batch_size), lambda x: t.net(self._inputs(x)), t)


class _FeatureStep:
    """Train and evaluate only the head, on activations of the frozen trunk computed once."""

    def __init__(self, trainer: _Trainer):
        self.t = trainer
        head_name = trainer.groups[list(trainer.groups)[-1]][0]
        self.head = trainer.net.get_submodule(head_name)
        trainer.net.eval()
        nodes = layer_nodes(trainer.net, trainer.config.model, ["pre_logits"])
        extractor = LayerExtractor(trainer.net, nodes, trainer.pre).to(trainer.device)
        self.features = {}
        for split in ("train", "val", "test"):
            data: Split | None = getattr(trainer.data, split)
            if data is not None:
                images = data.images if split != "train" else [eval_crop(i, trainer.pre) for i in data.images]
                self.features[split] = (_activations(extractor, images, trainer), data.labels.to(trainer.device))

    def train(self, optimizer, generator: torch.Generator, description: str) -> tuple[float, float]:
        t = self.t
        self.head.train()
        x, y = self.features["train"]
        if t.config.balanced:
            weights = (1.0 / torch.bincount(y.cpu()).double())[y.cpu()]
            order = torch.multinomial(weights, len(y), replacement=True, generator=generator)
        else:
            order = torch.randperm(len(y), generator=generator)
        batches = ((x[idx.to(t.device)], y[idx.to(t.device)]) for idx in order.split(t.config.batch_size))
        return _run_train(batches, self.head, optimizer, t, description)

    @torch.inference_mode()
    def evaluate(self, split: str) -> tuple[float, float]:
        self.head.eval()
        x, y = self.features[split]
        batch = self.t.config.batch_size
        return _run_eval(((x[i:i + batch], y[i:i + batch]) for i in range(0, len(y), batch)), self.head, self.t)


@torch.inference_mode()
def _activations(extractor: LayerExtractor, images: list[torch.Tensor], t: _Trainer) -> torch.Tensor:
    batch = t.config.batch_size
    parts = []
    for start in range(0, len(images), batch):
        x = torch.stack(images[start:start + batch]).to(t.device).contiguous(memory_format=torch.channels_last)
        with t._autocast():
            parts.append(extractor(x)["pre_logits"].float())
    return torch.cat(parts).clone()  # a normal tensor (not an inference tensor), usable by autograd


def _run_train(batches, forward: Callable, optimizer, t: _Trainer, description: str) -> tuple[float, float]:
    total_loss, correct, seen = 0.0, 0, 0
    with progress_bar(len(t.data.train.labels), description, not t.config.quiet) as advance:
        for x, y in batches:
            y = y.to(t.device, non_blocking=True)
            with t._autocast():
                logits = forward(x)
            loss = _loss(logits, y, t.config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            advance(len(y))
    return total_loss / seen, correct / seen


def _run_eval(batches: Iterator, forward: Callable, t: _Trainer) -> tuple[float, float]:
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in batches:
        y = y.to(t.device)
        with t._autocast():
            logits = forward(x)
        total_loss += float(F.cross_entropy(logits.float(), y)) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    return total_loss / seen, correct / seen
