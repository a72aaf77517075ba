"""Admission: how many pages, and how many decoded pixels, the server holds at once.

Every OCR request is admitted after its image header (or its PDF's page sizes) is read and
before any pixel is decoded. It reserves

* page slots: as many pages as it keeps in flight (1 for an image, ``min(pages, window)`` for a
  PDF), against ``capacity`` (``DSOCR_LIMITS__MAX_QUEUE``). When they do not fit, the request is
  refused at once with ``EngineOverloaded`` (429 + ``Retry-After``) instead of piling up behind
  the engine until every client times out;
* pixels: what its pages in flight cost in memory (:func:`page_cost`), against ``max_pixels``
  (``DSOCR_LIMITS__MAX_INFLIGHT_PIXELS``). When they do not fit, the request waits in line
  (first come, first served, holding its page slots) for at most ``wait_s``
  (``DSOCR_LIMITS__ADMISSION_WAIT_S``), then gets the same 429.

A request larger than a whole budget is clamped to it, so whatever the per-input limits accept is
still served: a document with more pages than ``capacity`` runs ``capacity`` pages at a time, and a
page costing more than ``max_pixels`` runs once nothing else is decoded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from dsocr.errors import EngineOverloaded
from dsocr.outputs import pixel_weight

__all__ = ["AdmissionQueue", "Ticket", "page_cost"]


def page_cost(size: tuple[int, int], outputs: Collection[str] = ()) -> int:
    """What a page of ``size`` (width, height) costs against the pixel budget, with ``outputs``
    drawn from it (each format says what its drawing costs: :attr:`dsocr.outputs.Output.pixel_cost`)."""
    width, height = size
    return max(1, width * height) * pixel_weight(outputs)


class Ticket:
    """Page slots and pixels held by one request. ``release`` is idempotent: every exit may call it."""

    def __init__(self, queue: AdmissionQueue, slots: int, pixels: int) -> None:
        self._queue = queue
        self.slots = slots
        self.pixels = pixels
        self._released = False

    def release(self) -> None:
        """Give the slots and pixels back (only the first call counts)."""
        if not self._released:
            self._released = True
            self._queue._give_back(self.slots, self.pixels)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


@dataclass(eq=False)
class _Waiter:
    pixels: int
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class AdmissionQueue:
    """Pages in flight against ``capacity`` and their decoded pixels against ``max_pixels``.

    Not thread-safe: used from the server's event loop only.
    """

    def __init__(self, capacity: int, *, max_pixels: int, retry_after_s: float = 1.0) -> None:
        if capacity < 1 or max_pixels < 1:
            raise ValueError("capacity and max_pixels must be at least 1")
        self.capacity = capacity
        self.max_pixels = max_pixels
        self.retry_after_s = retry_after_s
        self._pages = 0
        self._pixels = 0
        self._waiting: deque[_Waiter] = deque()

    @property
    def depth(self) -> int:
        """Pages admitted or waiting for pixels, not yet released."""
        return self._pages

    @property
    def pixels(self) -> int:
        """Pixels reserved by admitted requests, not yet released."""
        return self._pixels

    def check_room(self) -> None:
        """Raise ``EngineOverloaded`` now when no page slot is free (before reading an input)."""
        if self._pages >= self.capacity:
            raise self._queue_full()

    def reservation(self, page_costs: Sequence[int], window: int = 1) -> tuple[int, int]:
        """(slots, pixels) that ``admit`` reserves for pages of ``page_costs`` run ``window`` at a time.

        The window shrinks (to one page at least) until its costliest pages fit ``max_pixels``;
        what still does not fit is clamped to ``max_pixels``.
        """
        costliest = sorted((max(1, cost) for cost in page_costs), reverse=True) or [1]
        slots = max(1, min(window, len(costliest), self.capacity))
        while slots > 1 and sum(costliest[:slots]) > self.max_pixels:
            slots -= 1
        return slots, min(sum(costliest[:slots]), self.max_pixels)

    def try_admit(self, page_costs: Sequence[int], *, window: int = 1) -> Ticket | None:
        """``admit`` when it needs no wait: a ticket, ``None`` when pixels must be waited for.

        Raises ``EngineOverloaded`` when the page slots do not fit.
        """
        slots, pixels = self.reservation(page_costs, window)
        if self._pages + slots > self.capacity:
            raise self._queue_full()
        if self._waiting or self._pixels + pixels > self.max_pixels:
            return None
        self._pages += slots
        self._pixels += pixels
        return Ticket(self, slots, pixels)

    async def admit(self, page_costs: Sequence[int], *, window: int = 1, wait_s: float = 0.0) -> Ticket:
        """Reserve page slots and pixels for ``page_costs`` (see ``reservation``), or raise.

        Page slots are taken at once or refused (``EngineOverloaded``); pixels are waited for, in
        arrival order, at most ``wait_s`` seconds, then refused the same way. A caller cancelled
        while waiting holds nothing.
        """
        slots, pixels = self.reservation(page_costs, window)
        if self._pages + slots > self.capacity:
            raise self._queue_full()
        self._pages += slots
        try:
            await self._take_pixels(pixels, wait_s)
        except BaseException:
            self._give_back(slots, 0)
            raise
        return Ticket(self, slots, pixels)

    async def _take_pixels(self, pixels: int, wait_s: float) -> None:
        if not self._waiting and self._pixels + pixels <= self.max_pixels:
            self._pixels += pixels
            return
        waiter = _Waiter(pixels)
        self._waiting.append(waiter)
        try:
            await asyncio.wait({waiter.granted}, timeout=wait_s)
        except BaseException:
            if waiter.granted.done():
                self._give_back(0, pixels)  # granted just as the caller went away
            else:
                self._leave_line(waiter)
            raise
        if not waiter.granted.done():
            self._leave_line(waiter)
            raise EngineOverloaded(
                f"The server is at its memory budget: this request needs {_mp(pixels)} of decoded pages "
                f"and {_mp(self._pixels)} of {_mp(self.max_pixels)} are in flight "
                f"(DSOCR_LIMITS__MAX_INFLIGHT_PIXELS); no room came in {wait_s:g} s "
                "(DSOCR_LIMITS__ADMISSION_WAIT_S); retry later.",
                retry_after=self.retry_after_s,
            )

    def _queue_full(self) -> EngineOverloaded:
        return EngineOverloaded(
            f"The server is at capacity ({self._pages} of {self.capacity} pages in flight; "
            "DSOCR_LIMITS__MAX_QUEUE); retry later.",
            retry_after=self.retry_after_s,
        )

    def _leave_line(self, waiter: _Waiter) -> None:
        waiter.granted.cancel()
        self._waiting.remove(waiter)
        self._grant_waiting()  # the first in line may have left: the next one may fit

    def _give_back(self, slots: int, pixels: int) -> None:
        self._pages = max(0, self._pages - slots)
        self._pixels = max(0, self._pixels - pixels)
        self._grant_waiting()

    def _grant_waiting(self) -> None:
        # Strictly first come, first served: a large request at the head is never overtaken.
        while self._waiting and self._pixels + self._waiting[0].pixels <= self.max_pixels:
            waiter = self._waiting.popleft()
            self._pixels += waiter.pixels
            waiter.granted.set_result(None)


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:,.1f} MP"
