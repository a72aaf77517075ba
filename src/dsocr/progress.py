"""The pages progress bar of the command-line front ends (``dsocr ocr``, ``dsocr batch``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["progress_bar"]


class _RateColumn(ProgressColumn):
    """Pages per second since the start."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:.2f} pages/s", style="progress.data.speed")


@contextlib.contextmanager
def progress_bar(total: int, *, quiet: bool) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr (done/total, pages/s, ETA); yields ``advance``.

    Silent with ``quiet`` or when stderr is not a terminal (logs and pipes get no escape codes).
    """
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        yield lambda: None
        return
    columns = (
        TextColumn("OCR"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("pages", total=total)
        yield lambda: progress.advance(task)
