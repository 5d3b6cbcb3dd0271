"""``train-scratch``, ``finetune`` and ``plot``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alexfeat.cli.common import (MAX_SIDE, Device, Limit, Overwrite, PerClass, PrecisionOpt,
                                 choice_enum, given, handle_errors, parse_floats, parse_names, refuse)
from alexfeat.choices import RESIZE_MODES
from alexfeat.errors import AlexfeatError
from alexfeat.output import check_output
from alexfeat.trainers.config import (AUGMENTS, LR_SCHEDULES, OPTIMIZERS, RECIPES, SCHEDULES,
                                       TrainConfig, recipe_flags)
from alexfeat.trainers.plots import check_compare_output, plot_compare

# trainers.engine (torch) is imported inside the commands.


Optim = choice_enum("Optim", OPTIMIZERS)
Augment = choice_enum("Augment", AUGMENTS)
ResizeMode = choice_enum("ResizeMode", RESIZE_MODES)
LRSchedule = choice_enum("LRSchedule", LR_SCHEDULES)
Schedule = choice_enum("Schedule", SCHEDULES)
Recipe = choice_enum("Recipe", tuple(RECIPES))


TrainDir = Annotated[Optional[Path], typer.Argument(help="Folder of class sub-folders to train on.")]
TestDir = Annotated[Optional[Path], typer.Option(help="Folder of the same class sub-folders, evaluated every epoch.")]
RunOut = Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder to create.")]
Resume = Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this folder with its saved "
                                                                    "settings (--epochs N: extend it to N epochs).")]
KeepEvery = Annotated[int, typer.Option(min=0, help="Also keep a snapshot epoch_N.pt every this many epochs.")]
SwaFrom = Annotated[int, typer.Option(min=0, help="Stochastic weight averaging: from this epoch on, train at the "
                                                   "constant --swa-lr and average the weights of each epoch; "
                                                   "the average is what is evaluated and saved (0: off).")]
SwaLr = Annotated[Optional[float], typer.Option(help="The learning rate of the averaged epochs (default: --lr / 2).")]
# The options both trainers have, each with its help once (the defaults differ and stay with each command).
Lr = Annotated[float, typer.Option(help="Learning rate (the peak, with a warm-up or a schedule).")]
OptimOpt = Annotated[Optim, typer.Option(help="SGD with momentum 0.9, Adam or AdamW.")]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per training step.")]
WeightDecay = Annotated[float, typer.Option(min=0.0, help="L2 weight decay of the optimiser.")]
Balanced = Annotated[bool, typer.Option("--balanced", help="Sample every class equally per epoch.")]
ResizeModeOpt = Annotated[ResizeMode, typer.Option(help="crop (centre) or pad (keeps the aspect ratio).")]
LabelSmoothing = Annotated[float, typer.Option(min=0.0, max=0.5, help="Label smoothing of the loss (0: off).")]
LRScheduleOpt = Annotated[LRSchedule, typer.Option(help="Learning rate over the epochs: constant, cosine decay, "
                                                        "or step (divided by 10 after each third of them).")]
ValSplit = Annotated[float, typer.Option(min=0.0, max=0.9, help="Hold out this fraction of TRAIN_DIR (stratified) "
                                                                "to choose best.pt by; written to RUN/val.csv.")]
Seed = Annotated[int, typer.Option(help="Seed of the split, the initialisation, the augmentation and the order.")]
DeviceOpt = Annotated[Device, typer.Option(help="Where the network trains (auto: CUDA when present).")]
Workers = Annotated[Optional[int], typer.Option(min=0, help="Decoding and augmentation processes (default: from "
                                                            "the CPU count; none on the CPU once images are "
                                                            "cached).")]
Cache = Annotated[Optional[bool], typer.Option("--cache/--no-cache", help="Keep decoded images in memory (default: "
                                                                          "when they take under a quarter of RAM).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; the summary only.")]
_RESUME_OPTIONS = {"resume_dir", "epochs", "swa_from", "swa_lr", "workers", "quiet"}


def _given(ctx: typer.Context) -> set[str]:
    """The parameter names of the options the user typed (a default is not "given")."""
    return {name for name in ctx.params if given(ctx, name)}


def _run(ctx: typer.Context, config_args: dict, train_dir, test_dir, out, resume_dir) -> None:
    from alexfeat.trainers.config import apply_recipe
    from alexfeat.trainers.engine import resume, train

    typed = _given(ctx)
    if resume_dir is not None:
        extra = sorted(typed - _RESUME_OPTIONS)
        if extra:
            names = ", ".join(given(ctx, *extra))
            raise AlexfeatError(f"--resume continues a run with its saved settings: {names} cannot be given with it "
                                f"(only --epochs and --swa-from/--swa-lr, to extend the run, --workers and --quiet)")
        result = resume(resume_dir, epochs=config_args["epochs"] if "epochs" in typed else None,
                        swa_from=config_args["swa_from"] if "swa_from" in typed else None,
                        swa_lr=config_args["swa_lr"], mode=config_args["mode"], quiet=config_args["quiet"],
                        workers=config_args["workers"])
    else:
        missing = [name for name, v in (("TRAIN_DIR", train_dir), ("--test-dir", test_dir), ("-o", out)) if v is None]
        if missing:
            raise AlexfeatError(f"missing {', '.join(missing)} (or pass --resume RUN_DIR)")
        config_args = apply_recipe(config_args, typed)
        result = train(TrainConfig(train_dir=train_dir, test_dir=test_dir, out=out, **config_args))
    typer.echo(result.summary())


@handle_errors
def train_scratch_cli(
    ctx: typer.Context,
    train_dir: TrainDir = None, test_dir: TestDir = None, out: RunOut = None, resume_dir: Resume = None,
    model: Annotated[str, typer.Option(help="alexnet, or another torchvision architecture.")] = "alexnet",
    recipe: Annotated[Optional[Recipe], typer.Option(
        help="A named preset for the options you do not give: "
             + "; ".join(f"{name} = {recipe_flags(name)}" for name in RECIPES) + ".")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs in total.")] = 80,
    lr: Lr = 0.01,
    optimizer: OptimOpt = Optim.sgd,
    batch_size: BatchSize = 64,
    weight_decay: WeightDecay = 5e-4,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.99, help="Dropout in the classifier (0 disables).")] = 0.5,
    augment: Annotated[Augment, typer.Option(help="none, flip, standard (random resized crop, flip, mild colour "
                                                  "jitter) or strong (wider crops, stronger jitter).")]
    = Augment.standard,
    mixup: Annotated[float, typer.Option(min=0.0, help="MixUp with Beta(a, a) mixing weights (0: off).")] = 0.0,
    cutmix: Annotated[float, typer.Option(min=0.0, help="CutMix with Beta(a, a) box areas (0: off; with --mixup, "
                                                         "one of the two per batch).")] = 0.0,
    batch_norm: Annotated[bool, typer.Option("--batch-norm", help="AlexNet with batch-norm after each "
                                                                 "convolution.")] = False,
    balanced: Balanced = False,
    width_mult: Annotated[float, typer.Option(help="Scale every layer's channel count (e.g. 0.25).")] = 1.0,
    grayscale: Annotated[bool, typer.Option("--grayscale", help="One-channel input.")] = False,
    resize_mode: ResizeModeOpt = ResizeMode.crop,
    image_size: Annotated[int, typer.Option(min=32, max=MAX_SIDE, help="Network input size.")] = 224,
    label_smoothing: LabelSmoothing = 0.0,
    lr_schedule: LRScheduleOpt = LRSchedule.cosine,
    warmup_epochs: Annotated[int, typer.Option(min=0, help="Linear learning-rate warm-up before the schedule.")] = 0,
    swa_from: SwaFrom = 0,
    swa_lr: SwaLr = None,
    val_split: ValSplit = 0.0,
    limit: Limit = None,
    per_class: PerClass = None,
    keep_every: KeepEvery = 0,
    seed: Seed = 0,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = None,
    workers: Workers = None,
    cache: Cache = None,
    quiet: Quiet = False,
) -> None:
    """Train AlexNet from scratch on a folder of class sub-folders."""
    _run(ctx, dict(mode="scratch", model=model, recipe=recipe.value if recipe else None, epochs=epochs, lr=lr,
                   optimizer=optimizer.value, batch_size=batch_size, weight_decay=weight_decay, dropout=dropout,
                   augment=augment.value, mixup=mixup, cutmix=cutmix, batch_norm=batch_norm, balanced=balanced,
                   width_mult=width_mult, grayscale=grayscale, resize_mode=resize_mode.value, image_size=image_size,
                   label_smoothing=label_smoothing, lr_schedule=lr_schedule.value, warmup_epochs=warmup_epochs,
                   swa_from=swa_from, swa_lr=swa_lr,
                   val_split=val_split, limit=limit, per_class=per_class, keep_every=keep_every, seed=seed,
                   device=device.value,
                   precision=precision and precision.value, workers=workers,
                   cache=cache, quiet=quiet), train_dir, test_dir, out, resume_dir)


@handle_errors
def finetune_cli(
    ctx: typer.Context,
    train_dir: TrainDir = None, test_dir: TestDir = None, out: RunOut = None, resume_dir: Resume = None,
    model: Annotated[str, typer.Option("--model", "-m", help="alexnet, a torchvision model, or timm:NAME.")]
    = "alexnet",
    weights: Annotated[str, typer.Option(help="imagenet, or a path to a state dict / checkpoint.")] = "imagenet",
    list_groups_: Annotated[bool, typer.Option("--list-groups", help="Print the model's layer groups and exit.")]
    = False,
    schedule: Annotated[Schedule, typer.Option(help="layerwise: head first, then one more group per round; "
                                                    "head: head only; full: everything.")] = Schedule.layerwise,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs in total; layer-wise divides them among its rounds "
                                                    "(default: 10, or layer-wise 2 per round).")] = 10,
    epochs_per_round: Annotated[Optional[int], typer.Option(min=1, help="Layer-wise: this many epochs per round, "
                                                                        "instead of --epochs.")] = None,
    until: Annotated[Optional[str], typer.Option(help="Layer-wise: the deepest group to unfreeze "
                                                      "(a name from --list-groups).")] = None,
    discriminative_lr: Annotated[bool, typer.Option("--discriminative-lr", help="Lower learning rates for "
                                                                               "earlier layers.")] = False,
    lr_decay: Annotated[float, typer.Option(help="With --discriminative-lr: each group below the head "
                                                 "gets lr x decay^depth.")] = 0.5,
    lr: Lr = 0.001,
    optimizer: OptimOpt = Optim.sgd,
    batch_size: BatchSize = 64,
    weight_decay: WeightDecay = 1e-4,
    augment: Annotated[Augment, typer.Option(help="none lets head-only rounds train on cached activations.")]
    = Augment.none,
    balanced: Balanced = False,
    train_bn: Annotated[bool, typer.Option("--train-bn", help="Let batch-norm layers re-estimate their statistics "
                                                             "(default: kept from pretraining).")] = False,
    resize_mode: ResizeModeOpt = ResizeMode.crop,
    image_size: Annotated[Optional[int], typer.Option(min=32, max=MAX_SIDE,
                                                      help="Input size (default: the weights' own).")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Normalisation mean override, e.g. 0.5,0.5,0.5.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Normalisation std override.")] = None,
    label_smoothing: LabelSmoothing = 0.0,
    lr_schedule: LRScheduleOpt = LRSchedule.cosine,
    swa_from: SwaFrom = 0,
    swa_lr: SwaLr = None,
    val_split: ValSplit = 0.0,
    limit: Limit = None,
    per_class: PerClass = None,
    keep_every: KeepEvery = 0,
    seed: Seed = 0,
    device: DeviceOpt = Device.auto,
    precision: PrecisionOpt = None,
    workers: Workers = None,
    cache: Cache = None,
    quiet: Quiet = False,
) -> None:
    """Fine-tune a pretrained network on a folder of class sub-folders, layer by layer."""
    if list_groups_:
        from alexfeat.trainers.engine import list_groups

        refuse(ctx, "with --list-groups, which prints the layer groups of --model and exits",
               *[name for name in ctx.params if name not in ("list_groups_", "model")])

        groups = list_groups(model)
        width = max(map(len, groups))
        for name, count in groups.items():
            typer.echo(f"{name:{width}s} {count:>13,d} parameters")
        return
    typed = _given(ctx)
    if {"epochs", "epochs_per_round"} <= typed:
        raise AlexfeatError("give --epochs (the total, divided among the rounds) or --epochs-per-round, not both")
    if epochs_per_round is not None and schedule != Schedule.layerwise:
        raise AlexfeatError(f"--epochs-per-round applies to --schedule layerwise only: use --epochs with "
                            f"--schedule {schedule.value}")
    if resume_dir is None:
        if schedule != Schedule.layerwise:
            refuse(ctx, f"with --schedule {schedule.value}, which trains the same layers throughout", "until")
        if schedule == Schedule.head:
            refuse(ctx, "with --schedule head, which trains the head alone", "discriminative_lr")
        if not discriminative_lr:
            refuse(ctx, "without --discriminative-lr", "lr_decay")
    if schedule == Schedule.layerwise and "epochs" not in typed and epochs_per_round is None:
        epochs_per_round = 2
    _run(ctx, dict(mode="finetune", model=model, weights=weights, schedule=schedule.value,
              epochs_per_round=epochs_per_round, until=until, epochs=epochs, keep_every=keep_every,
              discriminative_lr=discriminative_lr, lr_decay=lr_decay, lr=lr,
              optimizer=optimizer.value, batch_size=batch_size, weight_decay=weight_decay, augment=augment.value,
              balanced=balanced, train_bn=train_bn, resize_mode=resize_mode.value, image_size=image_size,
              mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"), label_smoothing=label_smoothing,
              lr_schedule=lr_schedule.value, swa_from=swa_from, swa_lr=swa_lr, val_split=val_split, limit=limit,
              per_class=per_class, seed=seed,
              device=device.value,
              precision=precision and precision.value, workers=workers,
              cache=cache, quiet=quiet), train_dir, test_dir, out, resume_dir)


@handle_errors
def plot_cli(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to compare.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Figure to write: PNG, or another format matplotlib "
                                                          "writes, by the extension.")] = Path("compare.png"),
    labels: Annotated[Optional[str], typer.Option(help="Comma-separated legend names, one per run "
                                                       "(default: the run folders' names).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Test accuracy of several runs against epoch, on one chart."""

    check_compare_output(runs, out)  # before check_output makes the missing folders
    check_output(out, overwrite=overwrite, inputs=runs)
    plot_compare(runs, out, list(parse_names(labels)) if labels is not None else None)
    typer.echo(f"wrote {out}")


@handle_errors
def export_cli(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint: RUN/best.pt, last.pt or epoch_N.pt.")],
    out: Annotated[Path, typer.Argument(help="The .pth file to write: the plain state dict.")],
    overwrite: Overwrite = False,
) -> None:
    """Write a checkpoint's weights as a plain PyTorch state dict (for featurize --weights and other tools)."""
    from alexfeat.featurizer.checkpoint import export_weights

    check_output(out, overwrite=overwrite, inputs=(checkpoint,))
    exported = export_weights(checkpoint, out)
    typer.echo(f"wrote {out}: the weights of {exported.arch.model if exported.arch else 'the model'}"
               + (f" ({exported.arch.num_classes} classes: {', '.join(exported.classes)})" if exported.classes else ""))
