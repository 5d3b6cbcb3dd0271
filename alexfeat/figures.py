"""How alexfeat draws figures: matplotlib without a display, paths in titles and labels as text."""

from __future__ import annotations

from pathlib import Path

from alexfeat.errors import AlexfeatError

__all__ = ["pyplot", "figure_format"]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, with mathtext off: a "$" in a path is text, not math."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def figure_format(path: Path | str) -> str:
    """The format a figure at ``path`` is written in: its suffix, PNG without one. A suffix matplotlib
    cannot write is AlexfeatError: call this before the work the figure shows, so a typo costs nothing."""
    suffix = Path(path).suffix.lstrip(".").lower()
    if not suffix:
        return "png"
    from matplotlib.backend_bases import FigureCanvasBase  # what savefig accepts; the figure imports it anyway

    formats = {f for f in FigureCanvasBase.get_supported_filetypes() if f != "pgf"}  # pgf: needs a LaTeX install
    if suffix not in formats:
        raise AlexfeatError(f"{path}: a figure cannot be written as .{suffix}; name a .png file (or "
                            f"{', '.join('.' + f for f in sorted(formats) if f != 'png')})")
    return suffix
