"""The one rule for the model, weights and checkpoint paths a command reads: a run folder, another
folder or a file of another kind given in their place is named as such, with what to pass instead.

No torch, no scikit-learn: commands check their inputs before loading either.
"""

from __future__ import annotations

from pathlib import Path

from alexfeat.errors import AlexfeatError

__all__ = ["CHECKPOINT_SUFFIXES", "is_run_folder", "refuse_folder", "existing_file", "model_kind"]

CHECKPOINT_SUFFIXES = (".pt", ".pth")


def is_run_folder(path: Path | str) -> bool:
    """A trainer's run folder (trainers.run_dir.RunDir): the folder its config.json makes one."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def refuse_folder(path: Path | str, what: str) -> None:
    """AlexfeatError if ``path`` is a folder: a run folder names its checkpoints, any other is "not a {what}"."""
    path = Path(path)
    if is_run_folder(path):
        raise AlexfeatError(f"{path} is a run folder: pass {path / 'best.pt'} (or last.pt)")
    if path.is_dir():
        raise AlexfeatError(f"{path} is a folder, not a {what}")


def existing_file(path: Path | str, what: str, hint: str = "") -> Path:
    """``path`` if it is a file; else AlexfeatError: a folder as ``refuse_folder`` says, a missing path
    "does not exist" (``hint``: what to pass instead)."""
    path = Path(path)
    refuse_folder(path, what)
    if not path.is_file():
        raise AlexfeatError(f"{what} {path} does not exist" + (f" ({hint})" if hint else ""))
    return path


def model_kind(path: Path | str) -> str:
    """"checkpoint" (a trainer checkpoint, .pt/.pth) or "classifier" (a .joblib model from fit-*), or
    AlexfeatError for a folder or another file, before any option is checked against the kind. A missing
    file is the loader's to report, after the options."""
    path = Path(path)
    refuse_folder(path, "model file")
    suffix = path.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if suffix == ".joblib" or not path.is_file() or _starts_like_a_pickle(path):  # fit-* -o writes any name
        return "classifier"
    raise AlexfeatError(f"{path} is neither a classifier model from fit-* (.joblib) nor a trainer checkpoint "
                        f"({', '.join(CHECKPOINT_SUFFIXES)}): pass one of those")


def _starts_like_a_pickle(path: Path) -> bool:
    """Whether the file starts as fit-*'s joblib files do: an uncompressed pickle (protocol 2 or later)."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"
