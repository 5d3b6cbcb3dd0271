"""What every command shares: error handling, option parsing, choice lists."""

from __future__ import annotations

import functools
from enum import Enum
from typing import Annotated, Callable

import typer

from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.progress import stderr

__all__ = ["handle_errors", "parse_floats", "parse_names", "Device", "Overwrite"]


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files (never an input).")]


def handle_errors(func: Callable) -> Callable:
    """Turn expected failures into one line on stderr and exit code 2 (130 on Ctrl-C)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except AlexfeatError as exc:
            stderr.print(f"[bold red]error:[/] {exc}", soft_wrap=True, markup=True, highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            stderr.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise AlexfeatError(f"{option} takes comma-separated numbers, got {text!r}") from None


def parse_names(text: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (text or "").split(",") if x.strip())
