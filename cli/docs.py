"""docs/cli.md, the command-line reference, written from the commands' own help.

``python -m alexfeat.cli.docs`` (or ``make docs``) rewrites it; ``--check`` exits 1 when the file differs from
what the commands say now (``tests/test_docs.py`` runs that check). The text is plain Markdown from each
option's help record: no terminal width, colour or rich markup enters it, so the same code writes the same file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import typer
import typer.main
from typer.cli import get_docs_for_click

from alexfeat.atomic import atomic_write_text
from alexfeat.cli.app import app

__all__ = ["CLI_DOC", "REGENERATE", "cli_reference", "main"]

CLI_DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
REGENERATE = "make docs (or: python -m alexfeat.cli.docs)"
_HEADER = (f"<!-- Generated from the commands' own --help by `{REGENERATE}`: edit the help texts in cli/, "
           "not this file. -->\n\n")


def cli_reference() -> str:
    """Every command's usage, arguments and options (with defaults and ranges), as Markdown."""
    command = typer.main.get_command(app)
    text = get_docs_for_click(obj=command, ctx=typer.Context(command), name="alexfeat",
                              title="Command-line reference: `alexfeat`")
    return _HEADER + text.strip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alexfeat.cli.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale instead of writing it")
    parser.add_argument("--out", type=Path, default=CLI_DOC, help=f"default: {CLI_DOC.name} in docs/")
    args = parser.parse_args(argv)
    text = cli_reference()
    current = args.out.read_text(encoding="utf-8") if args.out.exists() else None
    if args.check:
        if current != text:
            print(f"{args.out} is stale: the commands' help has changed. Regenerate it with: {REGENERATE}",
                  file=sys.stderr)
            return 1
        return 0
    if current != text:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(f"{args.out} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
