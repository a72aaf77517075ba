"""PDF work in worker processes that a budget can kill: opening a PDF, rendering its pages.

PDFium cannot be interrupted from a thread, and a few KB of nested drawing (a Form XObject
drawing the previous one twice, N levels deep) keeps it busy for minutes and takes gigabytes.
So every pdfium call runs in a pool of worker processes (``pebble``), each task with a time
budget (``LimitSettings.render_timeout_s``) and each worker with an address-space limit
(``render_memory_mb``). A task over its budget, or whose caller is cancelled (client gone,
request deadline), gets its worker killed; the pool starts a fresh one. Over budget, the caller
gets a :class:`~dsocr.errors.RenderBudgetExceeded` naming the page.

The PDF reaches the workers as a file written once (:class:`PdfTempFile`), which each worker
opens on first use and keeps open for the pages that follow; pixels come back as raw RGB bytes.

    pool = render_pool(limits)
    layout = pool.call(open_pdf_task, path, ..., timeout_s=10, what="the PDF", action="to open", field=f)
    pixels = await pool.call_async(render_task, path, 3, 144, f, timeout_s=10, what="page 4", field=f)
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pebble import ProcessExpired, ProcessFuture, ProcessPool

from dsocr.errors import DsocrError, RenderBudgetExceeded, UndecodableInput
from dsocr.inputs.pdf import PagePixels, PdfFile
from dsocr.settings import LimitSettings

__all__ = [
    "PdfLayout",
    "PdfTempFile",
    "RenderPool",
    "cancel",
    "isolated_pdf_work",
    "open_pdf_task",
    "render_pool",
    "render_task",
]

logger = logging.getLogger(__name__)

# Documents a worker keeps open between tasks: the pages of a request arrive one after another,
# usually at the same worker set, and re-parsing a large PDF for every page would cost more than
# the render. A few stay open so that interleaved requests do not evict each other at once.
_OPEN_PER_WORKER = 4


@dataclass(frozen=True, slots=True)
class PdfLayout:
    """What opening a PDF tells: its page count, the selected pages and their rendered sizes."""

    page_count: int
    selected: tuple[int, ...]
    sizes: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A ``DsocrError`` raised in a worker, carried back whole (pickling an exception drops ``field``)."""

    error_type: type[DsocrError]
    message: str
    field: str | None

    def error(self) -> DsocrError:
        return self.error_type(self.message, field=self.field)


# --- worker side -------------------------------------------------------------------------------

_open_documents: OrderedDict[str, PdfFile] = OrderedDict()


def _init_worker(memory_bytes: int) -> None:
    """Runs in each new worker before its first task."""
    # A kill must not wait for pdfium to return to Python (pebble's SIGTERM handler would):
    # the default action ends the process at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        import resource  # POSIX only

        # Beyond this, allocations fail: pdfium gives up on the page or the worker dies, and
        # either way the page is reported over its memory budget.
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def _document(path: str, *, dpi: int, field: str) -> PdfFile:
    key = f"{path}@{dpi}"
    pdf = _open_documents.get(key)
    if pdf is not None:
        _open_documents.move_to_end(key)
        return pdf
    # Limits were checked when the document was opened for the caller.
    pdf = PdfFile(Path(path), max_pages=sys.maxsize, max_page_pixels=sys.maxsize, dpi=dpi, field=field)
    _open_documents[key] = pdf
    while len(_open_documents) > _OPEN_PER_WORKER:
        _, oldest = _open_documents.popitem(last=False)
        oldest.close()
    return pdf


def open_pdf_task(
    path: str, dpi: int, pages: str | None, max_pages: int, max_page_pixels: int, field: str
) -> PdfLayout | _Refusal:
    """Worker task: open the PDF at ``path`` and check its page and pixel limits."""
    try:
        pdf = PdfFile(
            Path(path),
            max_pages=max_pages,
            max_page_pixels=max_page_pixels,
            dpi=dpi,
            pages=pages,
            field=field,
        )
    except DsocrError as exc:
        return _Refusal(type(exc), exc.message, exc.field)
    try:
        return PdfLayout(page_count=pdf.page_count, selected=pdf.selected, sizes=pdf.sizes)
    finally:
        pdf.close()


def render_task(path: str, index: int, dpi: int, field: str) -> PagePixels | _Refusal:
    """Worker task: render page ``index`` (0-based) of the PDF at ``path``."""
    try:
        return _document(path, dpi=dpi, field=field).render(index)
    except DsocrError as exc:
        return _Refusal(type(exc), exc.message, exc.field)


# --- caller side -------------------------------------------------------------------------------


def cancel(future: ProcessFuture[Any]) -> None:
    """Cancel a task: dropped if still queued, its worker killed if it is running."""
    future.cancel()  # type: ignore[no-untyped-call]


def _unwrap(outcome: Any) -> Any:
    if isinstance(outcome, _Refusal):
        raise outcome.error()
    return outcome


def _context() -> Any:
    # Never fork a threaded server: forkserver forks workers from a clean single-threaded process.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class RenderPool:
    """Worker processes for pdfium work, each task under a time budget, each worker under a memory cap.

    Thread-safe; one pool serves every document of the process (see :func:`render_pool`).
    """

    def __init__(self, *, workers: int, memory_mb: int) -> None:
        self.workers = workers
        self.memory_mb = memory_mb
        self._lock = threading.Lock()
        self._pool: ProcessPool | None = None

    @property
    def slots_per_document(self) -> int:
        """Pages of one document rendering at once: half the workers, so one document (a PDF full
        of slow pages) cannot hold them all while other requests wait."""
        return max(1, self.workers // 2)

    def submit(self, task: Callable[..., Any], *args: Any, timeout_s: float) -> ProcessFuture[Any]:
        """Queue ``task(*args)``; its worker is killed once it has run ``timeout_s`` seconds."""
        with self._lock:
            if self._pool is None or not self._pool.active:
                if self._pool is not None:
                    logger.warning("the PDF render pool stopped working; starting a new one")
                    self._pool.stop()  # type: ignore[no-untyped-call]
                self._pool = ProcessPool(
                    max_workers=self.workers,
                    initializer=_init_worker,
                    initargs=(self.memory_mb * 1024 * 1024,),
                    context=_context(),
                )
            return self._pool.schedule(task, args=args, timeout=timeout_s)

    def result(
        self,
        future: ProcessFuture[Any],
        *,
        timeout_s: float,
        what: str,
        action: str = "to render",
        field: str | None,
    ) -> Any:
        """Wait for a submitted task. Errors name it: "{what} took longer than 10 s {action}"."""
        try:
            outcome = future.result()
        except Exception as exc:
            raise self._budget_error(exc, timeout_s=timeout_s, what=what, action=action, field=field) from exc
        except BaseException:
            cancel(future)  # interrupted while waiting (Ctrl-C): stop the work too
            raise
        return _unwrap(outcome)

    async def result_async(
        self,
        future: ProcessFuture[Any],
        *,
        timeout_s: float,
        what: str,
        action: str = "to render",
        field: str | None,
    ) -> Any:
        """Like :meth:`result`, awaitable; cancelling the caller kills the worker running the task."""
        try:
            # wrap_future cancels ``future`` when the awaiting task is cancelled; pebble then
            # kills the worker if the task had started.
            outcome = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            cancel(future)
            raise
        except Exception as exc:
            raise self._budget_error(exc, timeout_s=timeout_s, what=what, action=action, field=field) from exc
        return _unwrap(outcome)

    def call(
        self,
        task: Callable[..., Any],
        *args: Any,
        timeout_s: float,
        what: str,
        action: str = "to render",
        field: str | None,
    ) -> Any:
        """Run ``task(*args)`` in a worker and wait for it (see :meth:`result`)."""
        future = self.submit(task, *args, timeout_s=timeout_s)
        return self.result(future, timeout_s=timeout_s, what=what, action=action, field=field)

    async def call_async(
        self,
        task: Callable[..., Any],
        *args: Any,
        timeout_s: float,
        what: str,
        action: str = "to render",
        field: str | None,
    ) -> Any:
        """Run ``task(*args)`` in a worker and await it (see :meth:`result_async`)."""
        future = self.submit(task, *args, timeout_s=timeout_s)
        return await self.result_async(future, timeout_s=timeout_s, what=what, action=action, field=field)

    def _budget_error(
        self, exc: Exception, *, timeout_s: float, what: str, action: str, field: str | None
    ) -> DsocrError:
        if isinstance(exc, concurrent.futures.TimeoutError):
            return RenderBudgetExceeded(
                f"{what} took longer than {timeout_s:g} s {action} (DSOCR_LIMITS__RENDER_TIMEOUT_S)",
                field=field,
            )
        if isinstance(exc, MemoryError | ProcessExpired):
            # Out of address space, pdfium either fails through Python or aborts the process.
            code = getattr(exc, "exitcode", None)
            how = ""
            if isinstance(code, int):
                how = f"; the renderer died of signal {-code}" if code < 0 else f"; exit code {code}"
            return RenderBudgetExceeded(
                f"{what} needed more than {self.memory_mb} MiB of memory {action} "
                f"(DSOCR_LIMITS__RENDER_MEMORY_MB{how})",
                field=field,
            )
        if isinstance(exc, concurrent.futures.CancelledError):
            return DsocrError(f"{what} was cancelled: the document was closed")
        if isinstance(exc, BrokenProcessPool | RuntimeError):
            # The pool itself failed (not this input); the next task starts a new one.
            logger.error("the PDF render pool failed on %s", what, exc_info=exc)
            return DsocrError(f"{what} could not be processed: the PDF renderer failed; retry the request")
        logger.error("PDF render worker failed on %s", what, exc_info=exc)
        return UndecodableInput(f"{what} could not be processed: {type(exc).__name__}", field=field)

    def shutdown(self) -> None:
        """Stop the workers now (tasks still running are abandoned)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()  # type: ignore[no-untyped-call]
            pool.join()


_pools: dict[tuple[int, int], RenderPool] = {}
_pools_lock = threading.Lock()


def default_render_workers() -> int:
    """One worker per core, at least 2 (so one slow page never blocks all PDF work), at most 8."""
    return max(2, min(8, os.cpu_count() or 2))


def render_pool(limits: LimitSettings) -> RenderPool:
    """The process's pool for these limits' worker count and memory cap (started on first use)."""
    workers = limits.render_workers or default_render_workers()
    key = (workers, limits.render_memory_mb)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = RenderPool(workers=workers, memory_mb=limits.render_memory_mb)
        return pool


def isolated_pdf_work(limits: LimitSettings, *, pages: int) -> Callable[..., Any]:
    """A runner of ``task(*args)`` in a render worker, under the render memory limit and
    ``DSOCR_LIMITS__RENDER_TIMEOUT_S`` per page (plus one for opening): how a searchable PDF
    is written from an input PDF (``dsocr.outputs.FileContext.isolate``)."""
    timeout_s = limits.render_timeout_s * (pages + 1)

    def run(task: Callable[..., Any], *args: Any) -> Any:
        return render_pool(limits).call(
            task, *args, timeout_s=timeout_s, what="the PDF", action="to write", field="format"
        )

    return run


@atexit.register
def _shutdown_pools() -> None:
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        with contextlib.suppress(Exception):
            pool.shutdown()
    _remove_temp_dir()


# --- the PDF on disk for the workers -------------------------------------------------------------

_temp_dir: Path | None = None
_temp_dir_lock = threading.Lock()


def _pdf_dir() -> Path:
    global _temp_dir
    with _temp_dir_lock:
        if _temp_dir is None:
            _temp_dir = Path(tempfile.mkdtemp(prefix="dsocr-pdf-"))
        return _temp_dir


def _remove_temp_dir() -> None:
    with _temp_dir_lock:
        if _temp_dir is not None:
            shutil.rmtree(_temp_dir, ignore_errors=True)


class PdfTempFile:
    """The PDF's bytes in a private file, written once, that render workers open by path.

    A unique name per document, so a worker's cache of open files never mixes two documents.
    Removing it while a worker still holds it open is harmless (POSIX keeps the data until closed).
    """

    def __init__(self, data: bytes) -> None:
        self.path = _pdf_dir() / f"{uuid.uuid4().hex}.pdf"
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)

    def remove(self) -> None:
        """Delete the file; idempotent."""
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)
