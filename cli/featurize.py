"""``alexfeat featurize`` and ``alexfeat layers``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from alexfeat.cli.common import Device, handle_errors, parse_floats, parse_names
from alexfeat.featurizer.progress import stderr

# Core modules (torch, torchvision: ~3 s) are imported inside the commands, so that --help and
# option errors answer at once.


class Pool(str, Enum):
    none = "none"
    avg = "avg"
    max = "max"


class DType(str, Enum):
    float32 = "float32"
    float16 = "float16"


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="alexnet, any torchvision classification model, or timm:NAME.")]
WeightsOpt = Annotated[str, typer.Option(help="imagenet (pretrained, via the framework's cache), none (random init, "
                                              "seeded), or a path to a state dict / alexfeat checkpoint.")]


@handle_errors
def featurize_cli(
    images: Annotated[Path, typer.Argument(help="Folder of class sub-folders, flat folder, or CSV/TXT list of paths.")],
    out: Annotated[Path, typer.Argument(help="HDF5 store to write.")],
    model: ModelOpt = "alexnet",
    weights: WeightsOpt = "imagenet",
    layers: Annotated[Optional[str], typer.Option(help="Comma-separated layers, all from one pass "
                                                       "(default alexnet: pool5,fc6,fc7; others: pre_logits).")] = None,
    pool: Annotated[Pool, typer.Option(help="Reduce convolutional maps: none (flatten), avg or max.")] = Pool.none,
    dtype: Annotated[DType, typer.Option(help="Stored feature type.")] = DType.float32,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decoding processes (default: from CPU count).")] = None,
    device: Annotated[Device, typer.Option()] = Device.auto,
    seed: Annotated[int, typer.Option(help="Seed for --weights none.")] = 0,
    resize: Annotated[Optional[int], typer.Option(min=1, help="Shorter side before the crop.")] = None,
    crop: Annotated[Optional[int], typer.Option(min=1, help="Centre crop size.")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Normalisation mean, e.g. 0.5,0.5,0.5.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Normalisation std, e.g. 0.5,0.5,0.5.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run of the same command.")] = False,
    download: Annotated[bool, typer.Option(help="Allow downloading pretrained weights.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Turn a folder of images into CNN activations in one HDF5 store."""
    from alexfeat.featurizer.featurize import FeaturizeConfig, featurize

    config = FeaturizeConfig(
        images=images, out=out, model=model, weights=weights, layers=parse_names(layers), pool=pool.value,
        dtype=dtype.value, batch_size=batch_size, workers=workers, device=device.value, seed=seed, resize=resize,
        crop=crop, mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"), overwrite=overwrite,
        resume=resume, quiet=quiet, download=download,
    )
    try:
        result = featurize(config)
    except KeyboardInterrupt:
        stderr.print(f"interrupted: the finished batches are kept in {out}.partial; run the same command with "
                     f"--resume to continue", soft_wrap=True)
        raise
    if result.skipped:
        stderr.print(f"warning: skipped {len(result.skipped)} unreadable image(s):")
        for path, reason in result.skipped[:20]:
            stderr.print(f"  {path}: {reason}", soft_wrap=True)
    typer.echo(result.summary())


@handle_errors
def layers_cli(
    model: ModelOpt = "alexnet",
    all_nodes: Annotated[bool, typer.Option("--all", help="Also list every graph node name.")] = False,
) -> None:
    """List the layer names that --layers accepts for a model."""
    from alexfeat.featurizer.models import Arch, graph_nodes, layer_aliases, load_model

    loaded = load_model(Arch(model=model), "none")
    for alias, node in layer_aliases(loaded.net, model).items():
        typer.echo(f"{alias:12s} {node}")
    if all_nodes:
        for node in graph_nodes(loaded.net):
            typer.echo(node)
