"""What every command shares: error handling, option parsing, choice lists."""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Iterator, Optional

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from alexfeat.atomic import atomic_write_text
from alexfeat.choices import DEVICES, PRECISIONS, TTAS
from alexfeat.errors import AlexfeatError
from alexfeat.figures import figure_format
from alexfeat.output import check_outputs, refuse_input
from alexfeat.progress import stderr

__all__ = ["Command", "Group", "choice_enum", "handle_errors", "parse_floats", "parse_names", "given", "refuse",
           "Device", "Overwrite", "MAX_SIDE", "side_option", "Resize", "Crop", "Tta", "TtaOpt", "Limit", "PerClass",
           "Precision", "PrecisionOpt", "check_results", "write_results"]


def choice_enum(name: str, choices: tuple[str, ...]) -> type[Enum]:
    """A str Enum for a typer option, built from a core module's tuple: one list for the CLI and the core."""
    return Enum(name, {choice: choice for choice in choices}, type=str)


Device = choice_enum("Device", DEVICES)


# Typer's help shows a type for every parameter ("<bool>" on flags, "<list[Path]>" on arguments) and
# wraps required arguments in braces in the usage line. The help of a finished tool shows the
# value a user types (INT, PATH, TEXT, or the choices), nothing on flags, and arguments by name.
# An option whose help text says its default itself (finetune --epochs: "10, or 2 per round") shows no
# second "[default: ...]" from typer.
_TYPE_METAVARS = {int: "INT", float: "NUM", str: "TEXT"}


def _tidy_help(params: list) -> None:
    for param in params:
        if param.param_type_name == "argument":
            if param.metavar is None:
                param.metavar = param.name.upper()
            param.display_type_rich = lambda ctx: None  # the name says it; the help text says what it takes
            continue
        if param.help and "default" in param.help.lower():
            param.show_default = False
        if param.metavar is None:
            desc = param.type_descriptor
            if param.is_flag:
                param.metavar = ""
            elif desc.is_path:
                param.metavar = "PATH"
            elif desc.is_choice:
                param.metavar = "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices or ()) + "]"
            else:
                param.metavar = _TYPE_METAVARS.get(desc.annotation, "TEXT")


class _TidyHelp:
    """Mixed into typer's command classes: their options, --help included, get real metavars."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _tidy_help(self.params)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            _tidy_help([option])
        return option


class Command(_TidyHelp, TyperCommand):
    """A typer command whose --help shows real metavars (see ``_tidy_help``)."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar + ("..." if param.nargs != 1 and "..." not in param.metavar else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class Group(_TidyHelp, TyperGroup):
    """The root command: its own options (--version, --help) tidied like a command's."""


Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files (never an input).")]
# A larger image side is a typo (--crop 100000 asks for a 30 GB batch), refused before any work.
MAX_SIDE = 4096


def side_option(help: str):
    """The option of an image side in pixels (--resize, --crop), 1 to MAX_SIDE."""
    return typer.Option(min=1, max=MAX_SIDE, help=help)


Resize = Annotated[Optional[int], side_option("Shorter side before the crop.")]
Crop = Annotated[Optional[int], side_option("Centre crop size (alone: keeps the model's resize/crop ratio).")]
# A quick first try on part of the data; the rule (which rows, in which order) is samples.subset_indices.
Limit = Annotated[Optional[int], typer.Option(min=1, metavar="N", help="Only N images, spread evenly through the "
                                                                       "input's order (after --per-class).")]
PerClass = Annotated[Optional[int], typer.Option(min=1, metavar="N", help="Only the first N images of each class, "
                                                                          "in the input's order.")]
Tta = choice_enum("Tta", TTAS)
TtaOpt = Annotated[Tta, typer.Option("--tta", help="flip averages a checkpoint's logits (served bare features) with "
                                                   "the mirror image's; a .joblib model's features are made as its "
                                                   "training store's were (featurize --tta).")]
Precision = choice_enum("Precision", PRECISIONS)
PrecisionOpt = Annotated[Optional[Precision], typer.Option(
    help="What the network computes in: fp32; bf16 (bfloat16: native on GPUs and on CPUs with AMX or AVX512-BF16, "
         "emulated and slow elsewhere); auto: bf16 wherever it is native, CPUs included. Default: bf16 on CUDA, "
         "fp32 on the CPU; a fit-* model on images: the precision of its features (docs/precision.md).")]


def handle_errors(func: Callable) -> Callable:
    """Turn expected failures into one line on stderr and exit code 2 (130 on Ctrl-C), and the
    libraries' warnings into a short summary.

    A command that has more to say on Ctrl-C raises ``KeyboardInterrupt("interrupted: ...")``:
    its message replaces the plain "interrupted".
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            with summarised_warnings():
                return func(*args, **kwargs)
        except AlexfeatError as exc:
            stderr.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, markup=True, highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            stderr.print(str(exc) or "interrupted", soft_wrap=True)
            raise typer.Exit(130) from None

    return wrapper


@contextmanager
def summarised_warnings() -> Iterator[None]:
    """Print warnings when the block ends: each plain UserWarning (alexfeat's own) on its line, and all
    others (scikit-learn's ConvergenceWarning, FutureWarning, ...) on one line, counted, instead of
    one multi-line report each."""
    own: dict[str, None] = {}
    others: Counter[str] = Counter()
    first: dict[str, str] = {}  # each category's first message, its first line, as the example

    def collect(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message).strip()
        if category is UserWarning:
            own[text] = None
        else:
            others[category.__name__] += 1
            first.setdefault(category.__name__, (text.splitlines() or [""])[0][:90])

    with warnings.catch_warnings():
        warnings.showwarning = collect
        try:
            yield
        finally:
            for text in own:
                stderr.print(f"warning: {text}", soft_wrap=True)
            if others:
                parts = [f"{name}{f' x{n}' if n > 1 else ''} ({first[name]})" for name, n in others.most_common()]
                stderr.print(f"warning: {sum(others.values())} library warning(s): {'; '.join(parts)}",
                             soft_wrap=True)


def parse_floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise AlexfeatError(f"{option} takes comma-separated numbers, got {text!r}") from None


def parse_names(text: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (text or "").split(",") if x.strip())


def check_results(ctx: typer.Context, report: Path | None, plot: Path | None, overwrite: bool,
                  inputs: tuple[Path, ...]) -> None:
    """Refuse a command's JSON report and figure before any work: --overwrite without either, an output that is
    an input, a figure format matplotlib cannot write, an existing file without --overwrite."""
    if report is None and plot is None:
        refuse(ctx, "without --report or --plot", "overwrite")
    if plot is not None:  # "is also an input" first; a bad format before check_outputs makes missing folders
        refuse_input(plot, inputs)
        figure_format(plot)
    check_outputs((report, plot), overwrite=overwrite, inputs=inputs)


def write_results(result, report: Path | None, plot: Path | None, plotter: Callable, show: Callable,
                  figure: str = "figure") -> None:
    """A result's JSON report and figure, then the result on the terminal: files first, so that a closed
    terminal (``| head``) does not cost the user the report."""
    if report:
        atomic_write_text(report, result.to_json())
    if plot:
        plotter(result, plot)
    show(result)
    for label, path in (("report", report), (figure, plot)):
        if path:
            typer.echo(f"{label}: {path}")


def given(ctx: typer.Context, *names: str) -> list[str]:
    """The options among the parameters ``names`` that the user typed (a default is not "given")."""
    params = {p.name: p for p in ctx.command.params}
    # By name: typer carries its own copy of click, whose ParameterSource is not click.core's.
    typed = [n for n in names if getattr(ctx.get_parameter_source(n), "name", "DEFAULT") not in _NOT_TYPED]
    return [params[n].name.upper() if params[n].param_type_name == "argument" else max(params[n].opts, key=len)
            for n in typed]  # an argument by its metavar (TRAIN_DIR), an option by its long flag


_NOT_TYPED = ("DEFAULT", "DEFAULT_MAP")


def refuse(ctx: typer.Context, when: str, *names: str) -> None:
    """No option is silently ignored: AlexfeatError naming those of ``names`` the user gave, which
    do not apply ``when`` (e.g. "with --kernel linear")."""
    flags = given(ctx, *names)
    if flags:
        one = len(flags) == 1
        raise AlexfeatError(f"{', '.join(flags)} {'does' if one else 'do'} not apply {when}: "
                            f"leave {'it' if one else 'them'} out")
