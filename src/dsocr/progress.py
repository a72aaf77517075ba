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
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["progress_bar", "progress_counter"]


class _RateColumn(ProgressColumn):
    """Pages per second since the start."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:.2f} pages/s", style="progress.data.speed")


def _progress(console: Console) -> Progress:
    columns = (
        TextColumn("OCR"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=console, transient=False)


@contextlib.contextmanager
def progress_bar(total: int, *, quiet: bool) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr (done/total, pages/s, ETA); yields ``advance``.

    Silent with ``quiet`` or when stderr is not a terminal (logs and pipes get no escape codes).
    """
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        yield lambda: None
        return
    with _progress(console) as progress:
        task = progress.add_task("pages", total=total)
        yield lambda: progress.advance(task)


@contextlib.contextmanager
def progress_counter(*, quiet: bool) -> Iterator[Callable[[int, int | None], None]]:
    """The same bar for work whose size is learnt on the way (a job on a remote server): yields
    ``update(done, total)``. The bar appears once ``total`` is known and 2 or more (one page
    needs no bar); silent as :func:`progress_bar` is."""
    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        yield lambda done, total: None
        return
    with contextlib.ExitStack() as stack:
        shown: list[tuple[Progress, TaskID]] = []

        def update(done: int, total: int | None) -> None:
            if not shown:
                if total is None or total < 2:
                    return
                progress = stack.enter_context(_progress(console))
                shown.append((progress, progress.add_task("pages", total=total)))
            progress, task = shown[0]
            progress.update(task, completed=done, total=total if total is not None else None)

        yield update
