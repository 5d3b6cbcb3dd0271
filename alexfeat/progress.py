"""A progress bar with images/s and ETA on stderr (rich), or nothing when quiet."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

__all__ = ["progress_bar", "stderr"]

stderr = Console(stderr=True, highlight=False, markup=False)  # paths and reasons may hold [brackets]


class _RateColumn(ProgressColumn):
    """Images per second: rich's recent-window estimate, or over the whole run when the run is too short
    for a window (rich has none then, and a short run would end showing "--")."""

    def render(self, task) -> Text:
        speed = task.speed
        if not speed and task.elapsed:
            speed = (task.completed - task.fields.get("resumed_at", 0)) / task.elapsed
        return Text(f"{speed:6.1f} img/s" if speed else "    -- img/s")


@contextmanager
def progress_bar(total: int, description: str, enabled: bool = True, done: int = 0) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows a bar while the block runs when ``enabled``."""
    if not enabled:
        yield lambda n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=stderr, transient=False, speed_estimate_period=10) as progress:
        task = progress.add_task(description, total=total, completed=done, resumed_at=done)
        yield lambda n: progress.advance(task, n)
