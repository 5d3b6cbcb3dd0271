"""What every command shares: error handling, option parsing, choice lists."""

from __future__ import annotations

import functools
from enum import Enum
from typing import Annotated, Callable

import typer

from alexfeat.featurizer.errors import AlexfeatError
from alexfeat.featurizer.progress import stderr

__all__ = ["handle_errors", "parse_floats", "parse_names", "given", "refuse", "Device", "Overwrite"]


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


def given(ctx: typer.Context, *names: str) -> list[str]:
    """The options among the parameters ``names`` that the user typed (a default is not "given")."""
    params = {p.name: p for p in ctx.command.params}
    # By name: typer carries its own copy of click, whose ParameterSource is not click.core's.
    typed = [n for n in names if getattr(ctx.get_parameter_source(n), "name", "DEFAULT") not in _NOT_TYPED]
    return [max(params[n].opts, key=len) for n in typed]


_NOT_TYPED = ("DEFAULT", "DEFAULT_MAP")


def refuse(ctx: typer.Context, when: str, *names: str) -> None:
    """No option is silently ignored: AlexfeatError naming those of ``names`` the user gave, which
    do not apply ``when`` (e.g. "with --kernel linear")."""
    flags = given(ctx, *names)
    if flags:
        one = len(flags) == 1
        raise AlexfeatError(f"{', '.join(flags)} {'does' if one else 'do'} not apply {when}: "
                            f"leave {'it' if one else 'them'} out")
