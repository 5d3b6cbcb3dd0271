"""The names of a store's sidecar files: what an unfinished run leaves next to ``OUT``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["partial_path", "progress_path", "lock_path"]


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.json")


def lock_path(out: Path) -> Path:
    """The lock file held by the one run writing ``out`` (see ``alexfeat.lock.RunLock``)."""
    return out.with_name(out.name + ".lock")
