"""Training and evaluation data: decode once (into memory when it fits), augment per epoch."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.transforms import v2

from alexfeat.featurizer.decode import ImageDataset, Preprocess, decode_image, make_loader, resize_image
from alexfeat.errors import AlexfeatError
from alexfeat.featurizer.sources.folders import LIST_SUFFIXES, ImageList, list_images
from alexfeat.progress import progress_bar
from alexfeat.split import stratified_split

__all__ = ["Split", "TrainData", "prepare_data", "augmentation", "train_loader", "eval_batches", "training_image",
           "eval_crop"]

_CACHE_BUDGET = 0.25  # at most this share of physical memory for decoded images


@dataclass
class Split:
    """Decoded images (uint8, kept whole for training, centre-cropped for evaluation), labels and
    the images' absolute paths."""

    images: list[torch.Tensor]
    labels: torch.Tensor
    paths: list[str]


@dataclass
class TrainData:
    classes: tuple[str, ...]
    train: Split
    val: Split | None
    test: Split
    skipped: list[tuple[str, str]]


def prepare_data(train_dir, test_dir, pre: Preprocess, val_split: float, seed: int, workers: int,
                 cache: bool | None, quiet: bool, limit: int | None = None,
                 per_class: int | None = None) -> TrainData:
    """Check the folders, keep the images ``per_class`` and ``limit`` keep of each, decode every image once,
    split off validation rows.

    The decoded images are the cache (``cache`` None: on when they fit). Without it,
    images are decoded again each epoch; the first pass still finds the bad files.
    """
    train_list, test_list = (list_images(folder).subset(limit, per_class) for folder in (train_dir, test_dir))
    for name, given, lst in (("training", train_dir, train_list), ("test", test_dir, test_list)):
        if not lst.classes and Path(given).is_file():
            if Path(given).suffix.lower() in LIST_SUFFIXES:
                raise AlexfeatError(f"the {name} list {given} has no labels: give it a label column, or pass a "
                                    f"folder with one sub-folder per class")
            raise AlexfeatError(f"the {name} folder {given} is a file, not a folder: pass a folder with one "
                                f"sub-folder per class (or a list file with a label column)")
        if len(lst.classes) < 2:
            raise AlexfeatError(f"the {name} folder {given} needs at least two class sub-folders, "
                                f"found {len(lst.classes)}")
        if not lst.labeled:
            raise AlexfeatError(f"the {name} images in {lst.root} include unlabelled ones ({'; '.join(lst.warnings)}); "
                                f"every training or test image needs a class")
    if train_list.classes != test_list.classes:
        raise AlexfeatError(f"the test folder's classes ({', '.join(test_list.classes)}) differ from the training "
                            f"folder's ({', '.join(train_list.classes)})")
    if cache is None:
        cache = _fits_in_memory(len(train_list) + len(test_list), pre)
    train, skipped = _decode(train_list, pre, crop=pre.mode == "pad", keep=cache, workers=workers, show=not quiet)
    test, test_skipped = _decode(test_list, pre, crop=True, keep=True, workers=workers, show=not quiet)
    val = None
    if val_split > 0:
        train, val = _split(train, val_split, seed, pre)
    return TrainData(train_list.classes, train, val, test, skipped + test_skipped)


def _fits_in_memory(n: int, pre: Preprocess) -> bool:
    per_image = pre.channels * pre.resize * pre.resize * 4 // 3  # aspect ratios ~4:3
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return n * per_image < _CACHE_BUDGET * total


def _decode(images: ImageList, pre: Preprocess, crop: bool, keep: bool, workers: int,
            show: bool) -> tuple[Split, list]:
    loader = make_loader(ImageDataset(images.files, pre, crop=crop), 32, workers)
    decoded, labels, paths, skipped = [], [], [], []
    with progress_bar(len(images), f"decode {images.root.name}", show) as advance:
        for batch in loader:
            batch_images = list(batch.images) if isinstance(batch.images, torch.Tensor) else batch.images
            for i, image in zip(batch.indices, batch_images):
                decoded.append(image.clone() if keep else images.file(i))
                labels.append(images.labels[i])
                paths.append(os.path.abspath(images.file(i)))
            skipped += [(str(images.file(i)), reason) for i, reason in batch.failures]
            advance(len(batch.indices) + len(batch.failures))
    if not decoded:
        raise AlexfeatError(f"none of the images in {images.root} could be decoded")
    return Split(decoded, torch.tensor(labels), paths), skipped


def _split(train: Split, fraction: float, seed: int, pre: Preprocess) -> tuple[Split, Split]:
    kept, held = stratified_split(train.labels.numpy(), fraction, seed)
    val_images = [eval_crop(train.images[i], pre) for i in held]
    return (Split([train.images[i] for i in kept], train.labels[kept], [train.paths[i] for i in kept]),
            Split(val_images, train.labels[held], [train.paths[i] for i in held]))


def training_image(image: torch.Tensor | Path, pre: Preprocess) -> torch.Tensor:
    """A training image as the cache holds it: the tensor itself, or the file decoded now
    (resized, and in mode "crop" not yet cropped, leaving room for a random crop)."""
    if isinstance(image, torch.Tensor):
        return image
    return resize_image(decode_image(image, pre.decode_size, pre.grayscale), pre, crop=pre.mode == "pad")


def eval_crop(image: torch.Tensor | Path, pre: Preprocess) -> torch.Tensor:
    """What evaluation sees: the centre crop of a training image."""
    return v2.functional.center_crop(training_image(image, pre), [pre.crop, pre.crop])


def augmentation(kind: str, pre: Preprocess) -> v2.Transform:
    """Per-sample transforms on uint8 tensors, ending at [C, crop, crop]."""
    if kind == "standard":
        steps = [v2.RandomResizedCrop(pre.crop, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                 v2.ColorJitter(0.2, 0.2, 0.2)]
    elif kind == "strong":
        steps = [v2.RandomResizedCrop(pre.crop, scale=(0.2, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                 v2.ColorJitter(0.4, 0.4, 0.4)]
    else:
        steps = [v2.CenterCrop(pre.crop)] + ([v2.RandomHorizontalFlip()] if kind == "flip" else [])
    return v2.Compose(steps)


class _AugmentedDataset(Dataset):
    """(image, label) pairs; images are cached tensors or file paths decoded on the fly."""

    def __init__(self, split: Split, pre: Preprocess, transform: v2.Transform | None):
        self.split, self.pre, self.transform = split, pre, transform

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = training_image(self.split.images[i], self.pre)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.split.labels[i])


def train_loader(split: Split, pre: Preprocess, augment: str, batch_size: int, balanced: bool, workers: int,
                 generator: torch.Generator, pin_memory: bool) -> DataLoader:
    dataset = _AugmentedDataset(split, pre, augmentation(augment, pre))
    sampler = None
    if balanced:
        counts = torch.bincount(split.labels).double()
        sampler = WeightedRandomSampler((1.0 / counts)[split.labels], len(split.labels), replacement=True,
                                        generator=generator)
    return DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, num_workers=workers,
                      generator=generator, pin_memory=pin_memory, drop_last=False)


def eval_batches(split: Split, batch_size: int):
    """Evaluation images are cached centre crops: yield (uint8 [B, C, H, W], labels)."""
    for start in range(0, len(split.labels), batch_size):
        yield torch.stack(split.images[start:start + batch_size]), split.labels[start:start + batch_size]
