"""``alexfeat featurize`` and ``alexfeat layers``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alexfeat.cli.common import (Crop, Device, Limit, PerClass, PrecisionOpt, Resize, Tta, choice_enum,
                                 handle_errors, parse_floats, parse_names, refuse)
from alexfeat.choices import COMPRESSIONS, DECODES, DTYPES, ENGINES, POOLS
from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.arch import Arch
from alexfeat.featurizer.sources.folders import DEFAULT_MAX_PIXELS
from alexfeat.featurizer.sources import SourceOptions, parse_shard, source_kind
from alexfeat.progress import stderr

# Core modules (torch, torchvision: ~3 s) are imported inside the commands, so that --help and
# option errors answer at once.


Pool = choice_enum("Pool", POOLS)
Engine = choice_enum("Engine", ENGINES)
DType = choice_enum("DType", DTYPES)
Decode = choice_enum("Decode", DECODES)
Compression = choice_enum("Compression", COMPRESSIONS)


ModelOpt = Annotated[str, typer.Option("--model", "-m", metavar="NAME", help="alexnet, any torchvision classification "
                                                                             "model, or timm:NAME.")]
WeightsOpt = Annotated[str, typer.Option(metavar="imagenet|none|PATH",
                                         help="imagenet (pretrained, via the framework's cache), none (random init, "
                                              "seeded), or a path to a state dict / alexfeat checkpoint.")]


@handle_errors
def featurize_cli(
    ctx: typer.Context,
    paths: Annotated[list[str], typer.Argument(
        metavar="IMAGES... [OUT]", help="The images: a folder of class sub-folders, a flat folder, a CSV/TXT list, "
                                      "Parquet files (paths, or the images inside: Hugging Face datasets, "
                                      "img2dataset), or WebDataset tar shards (files, shards/*.tar, "
                                      "shards/{00000..00099}.tar, or their folder); see docs/sources.md. Then OUT, "
                                      "the HDF5 store to write (not with --parts DIR).")],
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="NAME", help="alexnet, any torchvision classification model, or timm:NAME (default: "
                                              "the checkpoint's model for an alexfeat checkpoint, else alexnet).")
    ] = None,
    weights: WeightsOpt = "imagenet",
    layers: Annotated[Optional[str], typer.Option(metavar="LAYER,...",
                                                  help="Comma-separated layers, all from one pass: aliases, graph "
                                                       "nodes or module names (default alexnet: pool5,fc6,fc7; "
                                                       "others: pre_logits).")] = None,
    pool: Annotated[Pool, typer.Option(help="Reduce convolutional maps: none (flatten), avg or max.")] = Pool.none,
    dtype: Annotated[DType, typer.Option(help="Stored feature type.")] = DType.float32,
    tta: Annotated[Tta, typer.Option("--tta", help="flip: store each image's features averaged with its mirror "
                                                   "image's (a second forward pass per image).")] = Tta.none,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 64,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decoding processes (default: from CPU count).")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Torch threads for the network "
                                                              "(default: from CPU count).")] = None,
    device: Annotated[Device, typer.Option(help="Where the network runs (auto: CUDA when present).")] = Device.auto,
    precision: PrecisionOpt = None,
    decode: Annotated[Decode, typer.Option(help="Where JPEGs are decoded: gpu (nvJPEG, in batches; other "
                                                "images on the CPU), cpu, or auto (gpu on CUDA).")] = Decode.auto,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the network (for long GPU runs; "
                                                            "compiling takes a minute).")] = False,
    compression: Annotated[Compression, typer.Option(help="HDF5 compression of the features "
                                                          "(none is fastest).")] = Compression.none,
    seed: Annotated[int, typer.Option(help="Seed for --weights none.")] = 0,
    resize: Resize = None,
    crop: Crop = None,
    mean: Annotated[Optional[str], typer.Option(metavar="R,G,B", help="Normalisation mean, e.g. 0.5,0.5,0.5.")] = None,
    std: Annotated[Optional[str], typer.Option(metavar="R,G,B", help="Normalisation std, e.g. 0.5,0.5,0.5.")] = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="Skip images with more pixels than this "
                                                        "(decompression-bomb guard).")] = DEFAULT_MAX_PIXELS,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run of the same command.")] = False,
    download: Annotated[bool, typer.Option(help="Allow downloading pretrained weights.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    classes: Annotated[Optional[Path], typer.Option("--classes", help="Class names, one a line, in label order: the "
                                                    "class list every shard shares.")] = None,
    label_key: Annotated[Optional[str], typer.Option(help="Tar shards: take the label from this field of each "
                                                          "sample's .json (default: its .cls).")] = None,
    path_column: Annotated[str, typer.Option(help="Parquet lists: the column of image paths.")] = "path",
    label_column: Annotated[Optional[str], typer.Option(help="Parquet: the column of labels (default: label, or "
                                                             "the one ClassLabel column).")] = None,
    image_column: Annotated[Optional[str], typer.Option(help="Parquet with the images inside: the column of images "
                                                             "(default: found from the schema).")] = None,
    limit: Limit = None,
    per_class: PerClass = None,
    parts: Annotated[Optional[Path], typer.Option(help="Write a folder of part stores (each with a done marker; "
                                                       "a rerun resumes) instead of OUT.")] = None,
    part_size: Annotated[int, typer.Option(min=1, help="Images per part.")] = 10_000,
    shard: Annotated[Optional[str], typer.Option(metavar="I/N", help="Only this 1/N of the input (by sorted key, or "
                                                                     "whole tar files), into --parts DIR.")] = None,
    engine: Annotated[Engine, typer.Option(help="local, or ray (Ray Data: decoding tasks and an actor pool of "
                                                "featurizers; needs alexfeat[ray]; writes --parts).")] = Engine.local,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: start a local one).")] = None,
    actors: Annotated[Optional[int], typer.Option(min=1, help="Ray: featurizer actors (default: one per GPU, "
                                                              "or one).")] = None,
) -> None:
    """Turn a folder of images into CNN activations in one HDF5 store."""
    from alexfeat.featurizer.featurize import featurize
    from alexfeat.featurizer.run import FeaturizeConfig

    images, out = _images_and_out(paths, parts)
    _refuse_unused_options(ctx, images, weights, parts, engine)

    source = SourceOptions(classes_file=classes, label_key=label_key, path_column=path_column,
                           label_column=label_column, image_column=image_column, limit=limit, per_class=per_class)
    config = FeaturizeConfig(
        images=images, out=out, source=source, shard=parse_shard(shard), parts=parts, part_size=part_size,
        engine=engine.value, address=address, actors=actors, model=model, weights=weights, layers=parse_names(layers),
        pool=pool.value, tta=tta.value,
        dtype=dtype.value, batch_size=batch_size, workers=workers, threads=threads, device=device.value,
        precision=precision and precision.value, decode=decode.value, compile=compile,
        compression=compression.value, seed=seed, resize=resize,
        crop=crop, mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"), max_pixels=max_pixels,
        overwrite=overwrite,
        resume=resume, quiet=quiet, download=download,
    )
    try:
        result = featurize(config)
    except KeyboardInterrupt:
        kept = f"{parts} (finished parts, and batches of the current one)" if parts else f"{out}.partial"
        again = "the same command" if parts else "the same command with --resume"
        raise KeyboardInterrupt(f"interrupted: the finished batches are kept in {kept}; run {again} to continue") \
            from None
    for warning in result.warnings:
        stderr.print(f"warning: {warning}", soft_wrap=True)
    if result.skipped:
        stderr.print(f"warning: skipped {len(result.skipped)} unreadable image(s):")
        for path, reason in result.skipped[:20]:
            stderr.print(f"  {path}: {reason}", soft_wrap=True)
    typer.echo(result.summary())


def _images_and_out(paths: list[str], parts: Optional[Path]) -> tuple[str | tuple[str, ...], Optional[Path]]:
    """IMAGES... OUT, or IMAGES... alone with --parts DIR; several inputs go on as a tuple."""
    if parts is None:
        if len(paths) < 2:
            raise AlexfeatError("give the images and then OUT, the store to write (or --parts DIR)")
        *images, out = paths
    else:
        if len(paths) > 1 and paths[-1].lower().endswith((".h5", ".hdf5")):
            raise AlexfeatError(f"give either an output store OUT.h5 or --parts DIR, not both ({paths[-1]})")
        images, out = paths, None
    return (images[0] if len(images) == 1 else tuple(images)), (Path(out) if out is not None else None)


def _refuse_unused_options(ctx: typer.Context, images: str | tuple[str, ...], weights: str, parts: Optional[Path],
                           engine: Engine) -> None:
    if weights != "none":
        refuse(ctx, "unless --weights none (it seeds the random initialisation)", "seed")
    if weights != "imagenet":
        refuse(ctx, "unless --weights imagenet (nothing else is downloaded)", "download")
    if parts is None:
        refuse(ctx, "without --parts DIR", "part_size")
    elif engine == Engine.local:
        refuse(ctx, "with --parts: a rerun keeps the done parts and resumes the unfinished one by itself; "
               "to start again, use a new --parts folder", "resume", "overwrite")
    if engine != Engine.ray:
        refuse(ctx, "without --engine ray", "address", "actors")
    kind = source_kind(images)
    if kind != "tar":
        refuse(ctx, "except to tar shards", "label_key")
    if kind != "parquet":
        refuse(ctx, "except to Parquet lists", "path_column")
        refuse(ctx, "except to Parquet files", "label_column", "image_column")


@handle_errors
def merge_cli(
    parts: Annotated[Path, typer.Argument(help="Folder of part stores written by featurize --parts.")],
    out: Annotated[Path, typer.Argument(help="The merged store to write.")],
    virtual: Annotated[bool, typer.Option("--virtual", help="Map onto the part files (HDF5 virtual datasets) "
                                                            "instead of copying; the parts must stay.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
) -> None:
    """Join finished parts into one store; refuses parts that differ or are not done."""
    from alexfeat.store.merge import merge_parts

    if not parts.is_dir():
        raise AlexfeatError(f"{parts} is not a folder of parts")
    rows, count = merge_parts(parts, out, virtual=virtual, overwrite=overwrite)
    typer.echo(f"merged {count} part(s), {rows} rows, into {out}{' (virtual)' if virtual else ''}")


@handle_errors
def layers_cli(
    model: ModelOpt = "alexnet",
    all_nodes: Annotated[bool, typer.Option("--all", help="Also list every graph node name.")] = False,
) -> None:
    """List the layer names --layers accepts for a model, with each one's output shape at its crop size."""
    from alexfeat.featurizer.layers import node_shapes
    from alexfeat.featurizer.models import graph_nodes, layer_aliases, load_model

    loaded = load_model(Arch(model=model), "none")
    aliases = layer_aliases(loaded.net, model)
    nodes = graph_nodes(loaded.net) if all_nodes else list(dict.fromkeys(aliases.values()))
    shapes = node_shapes(loaded.net, nodes, loaded.preprocess)
    typer.echo(f"output shapes for one {loaded.preprocess.crop}x{loaded.preprocess.crop} image; "
               f"--pool avg|max reduces C x H x W to C")
    for alias, node in aliases.items():
        typer.echo(f"{alias:12s} {node:24s} {_shape(shapes[node])}")
    if all_nodes:
        for node in nodes:
            typer.echo(f"{node:37s} {_shape(shapes[node])}")
        typer.echo("Module names (layer4, blocks.6, ...) are accepted too: they mean the module's last node above.")


def _shape(shape: tuple[int, ...] | None) -> str:
    if shape is None:
        return "(not a tensor)"
    size = 1
    for n in shape:
        size *= n
    return "x".join(map(str, shape)) + (f" ({size} values)" if len(shape) > 1 else "")
