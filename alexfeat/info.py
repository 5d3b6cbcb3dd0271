"""``alexfeat info PATH``: which kind of alexfeat file a path is, described by the stage that owns it.

Part of the public facade (like ``api``): it may import every stage. A store is described without
torch or scikit-learn; those load only for the files that need them.
"""

from __future__ import annotations

from pathlib import Path

from alexfeat.errors import AlexfeatError
from alexfeat.paths import is_run_folder, model_kind
from alexfeat.store.describe import describe_partial, describe_store
from alexfeat.store.paths import partial_path
from alexfeat.trainers.run_dir import describe_run

__all__ = ["describe"]


def describe(path: Path) -> list[str]:
    """Lines describing a store (.h5, a folder of parts, or an unfinished run's OUT.partial), a classifier
    model (.joblib), a checkpoint (.pt) or a trainer's run folder."""
    path = Path(path)
    if path.name.endswith(".partial"):
        path = path.with_name(path.name.removesuffix(".partial"))
    if not path.exists():
        if partial_path(path).exists():
            return describe_partial(path)
        raise AlexfeatError(f"{path} does not exist")
    if is_run_folder(path):
        return describe_run(path)
    if path.suffix.lower() in (".h5", ".hdf5") or path.is_dir():
        return describe_store(path)
    try:
        kind = model_kind(path)
    except AlexfeatError:
        raise AlexfeatError(f"{path}: info reads .h5 stores, run folders, classifier models from fit-* and "
                            f"trainer checkpoints (.pt)") from None
    if kind == "checkpoint":
        from alexfeat.featurizer.checkpoint import describe_checkpoint  # torch

        return describe_checkpoint(path)
    from alexfeat.classifiers.model_file import describe_model  # scikit-learn

    return describe_model(path)
