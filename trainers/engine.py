"""The training engine of both trainers: rounds of epochs, per-epoch checkpoints, exact resume.

A run is a list of rounds; each round trains a set of layer groups for some epochs with
a fresh optimizer and learning-rate schedule. Training from scratch is one round over
everything; layer-wise fine-tuning trains the new head first and unfreezes one more
group per round. Every epoch is seeded from (seed, epoch) and the model, optimizer and
scheduler are checkpointed after it, so a resumed run repeats an uninterrupted one.

This module owns a run's life cycle; ``optim`` builds each round's optimizer and schedule, and
``steps`` runs an epoch's training and evaluation passes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.arch import Arch
from alexfeat.featurizer.checkpoint import Checkpoint
from alexfeat.featurizer.decode import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from alexfeat.featurizer.device import default_workers, resolve_device, resolve_precision
from alexfeat.featurizer.featurizer import apply_overrides, check_input_size
from alexfeat.featurizer.layers import Normalize
from alexfeat.featurizer.models import build_network, empty_network, load_by_name
from alexfeat.progress import stderr
from alexfeat.trainers.averaging import WeightAverage
from alexfeat.trainers.config import TrainConfig
from alexfeat.trainers.data import Split, TrainData, prepare_data
from alexfeat.trainers.groups import group_sizes, head_modules, layer_groups, replace_head, set_trainable
from alexfeat.trainers.interrupts import interrupts_deferred
from alexfeat.trainers.optim import make_optimizer, schedule_text
from alexfeat.trainers.plots import plot_curves
from alexfeat.trainers.run_dir import RunDir
from alexfeat.trainers.steps import FeatureStep, ImageStep, StepContext

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
    elif ckpt.epoch >= config.epochs:  # nothing to train (a requeued job, say): said before any decoding
        stderr.print(f"{run.path} already finished its {config.epochs} epoch{'s' * (config.epochs != 1)}, so "
                     f"there is nothing to train: "
                     + ("a layer-wise run cannot be extended; start a new one from its weights "
                        f"(--weights {run.best_path})" if config.layerwise else "pass --epochs N to extend it"),
                     soft_wrap=True, highlight=False)
        best = ckpt.best or {"epoch": 0, "metric": "test_acc", "value": float("nan")}  # older last.pt
        return TrainResult(run, config.epochs, best["epoch"], best["metric"], best["value"], run.metrics()[-1])
    arch, pre = ckpt.arch, ckpt.preprocess
    net = build_network(arch)
    net.load_state_dict(ckpt.train_state_dict or ckpt.state_dict)  # the former: while averaging
    data = prepare_data(config.train_dir, config.test_dir, pre, config.val_split, config.seed,
                        _workers(config, device), config.cache, config.quiet,
                        config.limit, config.per_class)
    if changed:  # saved once the data is there: a run whose extension failed keeps its settings
        run.write_config(config)
    trainer = _Trainer(config, run, net, arch, pre, data, device)
    trainer.best = ckpt.best or trainer.best
    if ckpt.swa_count:
        trainer.average.load(ckpt.state_dict, ckpt.swa_count)
    run.truncate_metrics(ckpt.epoch)
    round_, round_epoch = ckpt.round, ckpt.round_epoch
    if round_epoch >= trainer.rounds[round_ - 1].epochs:
        return trainer.fit(round_ + 1, 1, None)
    state = {"optimizer": ckpt.optimizer, "scheduler": ckpt.scheduler} if ckpt.optimizer else None
    return trainer.fit(round_, round_epoch + 1, state)


def _extended(run: RunDir, config: TrainConfig, ckpt: Checkpoint, epochs: int, swa: dict) -> TrainConfig:
    """``config`` with ``epochs`` in total and the ``swa`` settings given, or an AlexfeatError saying why the
    run cannot be changed so."""
    done, flags = ckpt.epoch, ", ".join("--" + name.replace("_", "-") for name in swa)
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
    stderr.print(f"{what}: the learning-rate schedule is recomputed from epoch {ckpt.epoch + 1}: "
                 f"{schedule_text(new)}", soft_wrap=True, highlight=False)
    return new


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
                            _workers(config, device), config.cache, config.quiet,
                            config.limit, config.per_class)
        arch = replace(arch, num_classes=len(data.classes))
        torch.manual_seed(config.seed)
        return data, build_network(arch), arch, pre
    loaded = load_by_name(config.model, config.weights, seed=config.seed, model_optional=False)
    crop = config.image_size
    pre = apply_overrides(loaded.preprocess, crop=crop, mean=config.mean, std=config.std)
    pre = replace(pre, mode=config.resize_mode)
    _check_image_size(loaded.net, config.model, pre, default=loaded.preprocess.crop)
    data = prepare_data(config.train_dir, config.test_dir, pre, config.val_split, config.seed,
                        _workers(config, device), config.cache, config.quiet,
                        config.limit, config.per_class)
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
        self.groups = layer_groups(net, config.model)
        self.rounds = plan_rounds(config, list(self.groups))
        self.metric = "val_acc" if data.val is not None else "test_acc"
        self.best = {"metric": self.metric, "value": -1.0, "epoch": 0}
        self.total_epochs = sum(r.epochs for r in self.rounds)
        bf16 = resolve_precision(config.precision, device) == "bf16"
        self.steps = StepContext(config, data, pre, device, self.net, Normalize(pre).to(device), bf16,
                                 _augment_workers(config, device, data.train))
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
                step = self._head_on_cached_activations(rnd) or ImageStep(self.steps, self._frozen_modules(rnd))
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

    def _epoch(self, rnd: Round, round_epoch: int, epoch: int, step: ImageStep | FeatureStep, optimizer,
               scheduler) -> dict:
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
        with interrupts_deferred():  # a Ctrl-C here must not separate the metrics row from its checkpoint
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
        checkpoint = Checkpoint(
            arch=self.arch,
            state_dict=_cpu_state(self.average.net if averaged else self.net),
            preprocess=self.pre,
            classes=tuple(self.data.classes),
            epoch=epoch, round=round_, round_epoch=round_epoch,
            optimizer=optimizer.state_dict() if optimizer else None,
            scheduler=scheduler.state_dict() if scheduler else None,
            best=self.best,
            metrics=row,
            config=json.loads(self.config.to_json()),
        )
        if averaged:  # resume needs the weights being trained too; predict and best.pt the average only
            checkpoint = replace(checkpoint, train_state_dict=_cpu_state(self.net), swa_count=self.average.count)
        keep = self.config.keep_every
        self.run.save_checkpoint(checkpoint, best, snapshot=bool(keep and epoch and epoch % keep == 0))

    def _optimizer(self, rnd: Round):
        set_trainable(self.net, self.groups, list(rnd.trainable))
        return make_optimizer(self.net, self.groups, rnd.trainable, rnd.epochs, self.config)

    def _frozen_modules(self, rnd: Round) -> list[nn.Module]:
        """Modules whose own parameters are all frozen (kept in eval mode: batch-norm statistics, dropout)."""
        trained = {p for g in rnd.trainable for p in self.groups[g]}
        return [module for name, module in self.net.named_modules()
                if (own := [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)])
                and not trained.intersection(own)]

    def _head_on_cached_activations(self, rnd: Round) -> FeatureStep | None:
        """Head-only rounds without augmentation: compute the frozen trunk once, train the head on it."""
        config = self.config
        if (config.mode != "finetune" or rnd.trainable != (list(self.groups)[-1],) or config.augment != "none"
                or config.swa_from):
            return None
        head = head_modules(self.net)
        if len(head) != 1 or {f"{head[0]}.{p}" for p, _ in self.net.get_submodule(head[0]).named_parameters()} != set(
                self.groups[rnd.trainable[0]]):
            return None  # the head group also holds a norm (ConvNeXt, ViT): it trains on images
        return FeatureStep(self.steps)


def _cpu_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
