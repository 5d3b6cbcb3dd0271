"""The training engine of both trainers: rounds of epochs, per-epoch checkpoints, exact resume.

A run is a list of rounds; each round trains a set of layer groups for some epochs with
a fresh optimizer and learning-rate schedule. Training from scratch is one round over
everything; layer-wise fine-tuning trains the new head first and unfreezes one more
group per round. Every epoch is seeded from (seed, epoch) and the model, optimizer and
scheduler are checkpointed after it, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import json
import math
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
from torchvision.transforms import v2

from alexfeat.featurizer.decode import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.extract import LayerExtractor, Normalize
from alexfeat.featurizer.device import default_workers, resolve_device
from alexfeat.featurizer.network import apply_overrides, check_input_size
from alexfeat.featurizer.models import Arch, build_network, empty_network, layer_nodes, load_by_name
from alexfeat.featurizer.progress import progress_bar, stderr
from alexfeat.trainers.averaging import WeightAverage
from alexfeat.trainers.config import TrainConfig
from alexfeat.trainers.data import Split, TrainData, eval_batches, eval_crop, prepare_data, train_loader
from alexfeat.trainers.groups import group_sizes, head_modules, layer_groups, replace_head, set_trainable
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
        kept = sum(p.name.startswith("epoch_") for p in self.run.checkpoints())  # --keep-every
        snapshots = f", {kept} epoch_N.pt snapshot{'s' * (kept != 1)}" if kept else ""
        return (f"trained {self.epochs} epochs: test acc {last['test_acc']:.4f}{val} at the last epoch; "
                f"best {self.best_metric} {self.best_value:.4f} at epoch {self.best_epoch}; "
                f"{self.run.path} holds best.pt, last.pt{snapshots}, metrics.csv, curves.png"
                f"{', val.csv' if self.run.val_path.exists() else ''}")


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
    starts = range(len(groups) - 1, deepest - 1, -1)
    n = len(starts)
    if config.epochs_per_round:
        epochs = [config.epochs_per_round] * n
    elif config.epochs < n:
        raise AlexfeatError(f"--epochs {config.epochs} cannot be divided among the {n} rounds of layer-wise "
                            f"fine-tuning down to {groups[deepest]}: use --epochs {n} or more, a later --until, "
                            f"or --epochs-per-round")
    else:
        base, extra = divmod(config.epochs, n)
        epochs = [base + (k >= n - extra) for k in range(n)]  # the deeper rounds, training more, get the rest
    return [Round(k, tuple(groups[start:]), e) for k, (start, e) in enumerate(zip(starts, epochs), 1)]


def list_groups(model: str) -> dict[str, int]:
    """The layer groups of ``model`` and their parameter counts (built on the meta device: no memory, no init)."""
    net = empty_network(Arch(model=model))
    return group_sizes(net, layer_groups(net, model))


# In training mode these return auxiliary classifier outputs too, which the engine's loss does not take.
_AUX_OUTPUT_MODELS = ("googlenet", "inception_v3")


def train(config: TrainConfig) -> TrainResult:
    """Start a new run in ``config.out``."""
    config.check_new_run()
    if config.model in _AUX_OUTPUT_MODELS:
        raise AlexfeatError(f"{config.model} returns auxiliary outputs while training, which the trainers do not "
                            f"handle yet; choose another model (its features work with featurize)")
    device = resolve_device(config.device)
    if config.mode == "finetune":
        rounds = plan_rounds(config, list(list_groups(config.model)))  # an unknown --until fails now, too
        config = replace(config, epochs=sum(r.epochs for r in rounds))  # config.json states the real total
    run = RunDir.claim(config.out)  # before minutes of decoding, not after
    try:
        data, net, arch, pre = _build(config, device)
        try:
            run.start(config)
            run.write_skipped(data.skipped)
            if data.val is not None:
                run.write_validation(data.val.paths, [data.classes[y] for y in data.val.labels.tolist()])
            trainer = _Trainer(config, run, net, arch, pre, data, device)
            trainer.save(round_=1, round_epoch=0, epoch=0, optimizer=None, scheduler=None, row={}, best=False)
        except BaseException:  # Ctrl-C included: no last.pt, nothing to resume
            run.discard()
            raise
        return trainer.fit(start_round=1, start_epoch=1, optimizer_state=None)
    finally:
        run.unlock()


def resume(run_path: Path, epochs: int | None = None, swa_from: int | None = None, swa_lr: float | None = None,
           mode: str | None = None, **changes) -> TrainResult:
    """Continue a run from its last checkpoint with its saved settings; ``epochs``: extend it to that total;
    ``swa_from``/``swa_lr``: average its weights from that (future) epoch on; ``mode``: the trainer asked
    to resume it ("scratch" or "finetune"; None: either)."""
    run = RunDir.open(run_path).lock()
    try:
        return _resume(run, epochs, {"swa_from": swa_from, "swa_lr": swa_lr}, mode, changes)
    finally:
        run.unlock()


_COMMANDS = {"scratch": "train-scratch", "finetune": "finetune"}


def _resume(run: RunDir, epochs: int | None, swa: dict, mode: str | None, changes: dict) -> TrainResult:
    config = run.config(**{k: v for k, v in changes.items() if v is not None})
    if mode is not None and config.mode != mode:
        raise AlexfeatError(f"{run.path} is a {_COMMANDS[config.mode]} run: continue it with alexfeat "
                            f"{_COMMANDS[config.mode]} --resume {run.path}")
    device = resolve_device(config.device)
    ckpt = run.load_last()
    swa = {k: v for k, v in swa.items() if v is not None and v != getattr(config, k)}
    changed = (epochs is not None and epochs != config.epochs) or bool(swa)
    if changed:
        config = _extended(run, config, ckpt, config.epochs if epochs is None else epochs, swa)
    elif ckpt["epoch"] >= config.epochs:  # nothing to train (a requeued job, say): said before any decoding
        stderr.print(f"{run.path} already finished its {config.epochs} epoch{'s' * (config.epochs != 1)}, so "
                     f"there is nothing to train: "
                     + ("a layer-wise run cannot be extended; start a new one from its weights "
                        f"(--weights {run.best_path})" if config.layerwise else "pass --epochs N to extend it"),
                     soft_wrap=True, highlight=False)
        best = ckpt.get("best") or {"epoch": 0, "metric": "test_acc", "value": float("nan")}  # older last.pt
        return TrainResult(run, config.epochs, best["epoch"], best["metric"], best["value"], run.metrics()[-1])
    arch = Arch.from_dict(ckpt["arch"])
    net = build_network(arch)
    net.load_state_dict(ckpt.get("train_state_dict") or ckpt["state_dict"])  # the former: while averaging
    pre = Preprocess.from_dict(ckpt["preprocess"])
    data = prepare_data(config.train_dir, config.test_dir, pre, config.val_split, config.seed,
                        _workers(config, device), config.cache, config.quiet)
    if changed:  # saved once the data is there: a run whose extension failed keeps its settings
        run.write_config(config)
    trainer = _Trainer(config, run, net, arch, pre, data, device)
    trainer.best = ckpt.get("best") or trainer.best
    if ckpt.get("swa_count"):
        trainer.average.load(ckpt["state_dict"], ckpt["swa_count"])
    run.truncate_metrics(ckpt["epoch"])
    round_, round_epoch = ckpt["round"], ckpt["round_epoch"]
    if round_epoch >= trainer.rounds[round_ - 1].epochs:
        return trainer.fit(round_ + 1, 1, None)
    state = {"optimizer": ckpt["optimizer"], "scheduler": ckpt["scheduler"]} if ckpt.get("optimizer") else None
    return trainer.fit(round_, round_epoch + 1, state)


def _extended(run: RunDir, config: TrainConfig, ckpt: dict, epochs: int, swa: dict) -> TrainConfig:
    """``config`` with ``epochs`` in total and the ``swa`` settings given, or an AlexfeatError saying why the
    run cannot be changed so."""
    done, flags = ckpt["epoch"], ", ".join("--" + name.replace("_", "-") for name in swa)
    if config.layerwise:
        if swa:
            raise AlexfeatError(f"{flags} cannot change a layer-wise run: weight averaging applies to "
                                f"train-scratch and finetune --schedule full")
        raise AlexfeatError(f"--epochs cannot change a layer-wise run: its {config.epochs} epochs are already "
                            f"divided among its rounds; start a new run with the total you want")
    if epochs < done:
        raise AlexfeatError(f"{run.path} has already trained {done} epochs: --epochs must be at least that")
    if swa and epochs == done:
        raise AlexfeatError(f"{run.path} has trained all of its {done} epochs, so {flags} would change none of "
                            f"them: give --epochs too, to extend the run")
    if config.swa_from and done >= config.swa_from and swa:
        raise AlexfeatError(f"{run.path} has averaged its weights since epoch {config.swa_from}: {flags} cannot "
                            f"change")
    if swa.get("swa_from") and swa["swa_from"] <= done:
        raise AlexfeatError(f"{run.path} has already trained {done} epochs: --swa-from must come after them "
                            f"(at least {done + 1})")
    new = replace(config, epochs=epochs, **swa)
    verb = "extending" if epochs > config.epochs else "shortening"
    what = (f"{verb} {run.path} from {config.epochs} to {epochs} epochs" if epochs != config.epochs
            else f"changing {run.path}")
    stderr.print(f"{what}: the learning-rate schedule is recomputed from epoch {ckpt['epoch'] + 1}: "
                 f"{_schedule_text(new)}", soft_wrap=True, highlight=False)
    return new


def _schedule_text(config: TrainConfig) -> str:
    """The learning-rate schedule of a one-round run, in words (the log of a changed run)."""
    main = config.scheduled_epochs
    text = f"{config.lr_schedule} over epochs 1-{main}" if main else ""
    if config.swa_from:
        text += (", then " if text else "") + (f"{config.averaging_lr:g} with weights averaged from epoch "
                                               f"{config.swa_from} to {config.epochs}")
    return text


def _workers(config: TrainConfig, device: torch.device) -> int:
    return default_workers(device) if config.workers is None else config.workers


def _augment_workers(config: TrainConfig, device: torch.device, split: Split) -> int:
    """Processes for the per-epoch augmentation. On the CPU with the images cached, none by default:
    augmenting cached tensors is cheap, and worker processes took cores from the network (3 epochs
    of 400 images at 112 px on 2 cores: 4.4-4.8 s per epoch with none, 4.8-5.1 with 1, 5.3-6.0 with 2)."""
    cached = all(isinstance(image, torch.Tensor) for image in split.images)
    if config.workers is None and device.type == "cpu" and cached:
        return 0
    return _workers(config, device)


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
        arch = Arch(model=config.model, num_classes=2, width_mult=config.width_mult, in_chans=channels,
                    dropout=config.dropout if config.model == "alexnet" else None, batch_norm=config.batch_norm)
        _check_image_size(build_network(arch), config.model, pre, default=224)  # before minutes of decoding
        data = prepare_data(config.train_dir, config.test_dir, pre, config.val_split, config.seed,
                            _workers(config, device), config.cache, config.quiet)
        arch = replace(arch, num_classes=len(data.classes))
        torch.manual_seed(config.seed)
        return data, build_network(arch), arch, pre
    loaded = load_by_name(config.model, config.weights, seed=config.seed, model_optional=False)
    crop = config.image_size
    pre = apply_overrides(loaded.preprocess, crop=crop, mean=config.mean, std=config.std)
    pre = replace(pre, mode=config.resize_mode)
    _check_image_size(loaded.net, config.model, pre, default=loaded.preprocess.crop)
    data = prepare_data(config.train_dir, config.test_dir, pre, config.val_split, config.seed,
                        _workers(config, device), config.cache, config.quiet)
    torch.manual_seed(config.seed)
    replace_head(loaded.net, len(data.classes))
    return data, loaded.net, replace(loaded.arch, num_classes=len(data.classes)), pre


def _check_image_size(net: nn.Module, model: str, pre: Preprocess, default: int) -> None:
    """Refuse, in one line, an --image-size the network cannot take (too small for its pooling, or not the one
    size a ViT is built for), naming one it can."""
    def forward(size: int) -> torch.Tensor:
        with torch.no_grad():  # not inference_mode: a module caching a tensor here must still train
            return net.eval()(torch.zeros(1, pre.channels, size, size))

    check_input_size(forward, model, pre.crop, default, flag="--image-size")


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
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
        self.average = WeightAverage(self.net) if config.swa_from else None

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
                    # the rate of the next epoch under this run's schedule (recomputed if --epochs extended it)
                    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
                        group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)
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
        net = None  # the network being trained
        if self.averaging(epoch):  # from here on the run's network (evaluated, saved) is the average
            self.average.update(self.net)
            step.estimate_batch_norm(self.average, generator)
            net = self.average.net
        if self.data.val is not None:
            row["val_loss"], row["val_acc"] = step.evaluate("val", net)
        row["test_loss"], row["test_acc"] = step.evaluate("test", net)
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

    def averaging(self, epoch: int) -> bool:
        return self.average is not None and epoch >= self.config.swa_from

    def save(self, round_: int, round_epoch: int, epoch: int, optimizer, scheduler, row: dict, best: bool) -> None:
        averaged = self.averaging(epoch)
        payload = {
            "arch": self.arch.to_dict(),
            "state_dict": _cpu_state(self.average.net if averaged else self.net),
            "preprocess": asdict(self.pre),
            "classes": list(self.data.classes),
            "epoch": epoch, "round": round_, "round_epoch": round_epoch,
            "optimizer": optimizer.state_dict() if optimizer else None,
            "scheduler": scheduler.state_dict() if scheduler else None,
            "best": self.best,
            "metrics": row,
            "config": json.loads(self.config.to_json()),
        }
        if averaged:  # resume needs the weights being trained too; predict and best.pt the average only
            payload.update(train_state_dict=_cpu_state(self.net), swa_count=self.average.count)
        keep = self.config.keep_every
        self.run.save_checkpoint(payload, best, snapshot=bool(keep and epoch and epoch % keep == 0))

    def _optimizer(self, rnd: Round):
        set_trainable(self.net, self.groups, list(rnd.trainable))
        config, names = self.config, list(self.groups)
        named = dict(self.net.named_parameters())
        param_groups = []
        for group in rnd.trainable:
            depth = len(names) - 1 - names.index(group)  # 0 for the head
            lr = config.lr * (config.lr_decay ** depth if config.discriminative_lr else 1.0)
            params = [named[p] for p in self.groups[group]]
            param_groups.append({"params": params, "lr": lr})
        if config.optimizer == "sgd":
            optimizer = torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum,
                                        weight_decay=config.weight_decay)
        else:
            cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
            optimizer = cls(param_groups, lr=config.lr, weight_decay=config.weight_decay)
        # A function of the epoch and the round's length only, so a resumed run that extends the
        # round (--resume --epochs N) recomputes the schedule over its new length.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config, rnd.epochs))
        return optimizer, scheduler

    def _frozen_modules(self, rnd: Round) -> list[nn.Module]:
        """Modules whose own parameters are all frozen (kept in eval mode: batch-norm statistics, dropout)."""
        trained = {p for g in rnd.trainable for p in self.groups[g]}
        return [module for name, module in self.net.named_modules()
                if (own := [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)])
                and not trained.intersection(own)]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def _head_on_cached_activations(self, rnd: Round) -> "_FeatureStep | None":
        """Head-only rounds without augmentation: compute the frozen trunk once, train the head on it."""
        config = self.config
        if (config.mode != "finetune" or rnd.trainable != (list(self.groups)[-1],) or config.augment != "none"
                or config.swa_from):
            return None
        head = head_modules(self.net)
        if len(head) != 1 or {f"{head[0]}.{p}" for p, _ in self.net.get_submodule(head[0]).named_parameters()} != set(
                self.groups[rnd.trainable[0]]):
            return None  # the head group also holds a norm (ConvNeXt, ViT): it trains on images
        return _FeatureStep(self)


def _cpu_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}


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


def _lr_factor(config: TrainConfig, epochs: int) -> Callable[[int], float]:
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


def _mixer(config: TrainConfig, num_classes: int) -> Callable | None:
    """MixUp and/or CutMix on a normalised batch (one of the two per batch when both are on)."""
    ops = ([v2.MixUp(alpha=config.mixup, num_classes=num_classes)] if config.mixup else []) + (
        [v2.CutMix(alpha=config.cutmix, num_classes=num_classes)] if config.cutmix else [])
    if not ops:
        return None
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)


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

    def _augmented(self, generator: torch.Generator):
        """One epoch of augmented training batches (uint8 images, labels), in the order ``generator`` draws."""
        t, config = self.t, self.t.config
        return train_loader(t.data.train, t.pre, config.augment, config.batch_size, config.balanced,
                            _augment_workers(config, t.device, t.data.train), generator, t.device.type == "cuda")

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        t = self.t
        x = t.normalize(images.to(t.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last)

    def train(self, optimizer, generator: torch.Generator, description: str) -> tuple[float, float]:
        t, config = self.t, self.t.config
        t.net.train()
        for module in self.frozen:
            module.eval()  # frozen layers (and, fine-tuning, batch-norm layers) keep their statistics
        batches = ((self._inputs(x), y.to(t.device, non_blocking=True)) for x, y in self._augmented(generator))
        mix = _mixer(config, len(t.data.classes))
        if mix is not None:
            batches = (mix(x, y) for x, y in batches)
        return _run_train(batches, t.net, optimizer, t, description)

    @torch.inference_mode()
    def evaluate(self, split: str, net: nn.Module | None = None) -> tuple[float, float]:
        t = self.t
        net = t.net if net is None else net
        net.eval()
        data = t.data.val if split == "val" else t.data.test
        return _run_eval(eval_batches(data, t.config.batch_size), lambda x: net(self._inputs(x)), t)

    def estimate_batch_norm(self, average: WeightAverage, generator: torch.Generator) -> None:
        """The averaged network's batch-norm statistics, on one more pass over the augmented training images."""
        t = self.t

        def forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
            with t._autocast():
                return net(x)

        # Batch-norm layers kept in inference mode while training (fine-tuning without --train-bn, frozen
        # groups) keep their statistics in the average too: the weights were trained against those.
        kept = {name for name, module in t.net.named_modules() if any(module is m for m in self.frozen)}
        average.estimate_batch_norm((self._inputs(x) for x, _ in self._augmented(generator)), forward, kept)


class _FeatureStep:
    """Train and evaluate only the head, on activations of the frozen trunk computed once."""

    def __init__(self, trainer: _Trainer):
        self.t = trainer
        self.head = trainer.net.get_submodule(head_modules(trainer.net)[0])
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
    def evaluate(self, split: str, net: None = None) -> tuple[float, float]:
        """``net`` is always None: weight averaging never trains on cached activations."""
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
            correct += int((logits.argmax(1) == (y.argmax(1) if y.ndim > 1 else y)).sum())  # mixed: the major label
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
