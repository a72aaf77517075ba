"""A bounded admission queue: how many pages the server accepts at once.

Each OCR request reserves as many slots as it will keep pages in flight (1 for an image,
``min(pages, window)`` for a PDF) before any work starts. When the reservation does not fit, the
request is refused at once with ``EngineOverloaded`` (429 + ``Retry-After``) instead of piling
up behind the engine until every client times out.
"""

from __future__ import annotations

from types import TracebackType

from dsocr.errors import EngineOverloaded

__all__ = ["AdmissionQueue", "Ticket"]


class Ticket:
    """Slots held by one request. ``release`` is idempotent, so every exit path may call it."""

    def __init__(self, queue: AdmissionQueue, slots: int) -> None:
        self._queue = queue
        self.slots = slots
        self._released = False

    def release(self) -> None:
        """Give the slots back (only the first call counts)."""
        if not self._released:
            self._released = True
            self._queue._give_back(self.slots)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class AdmissionQueue:
    """Counts pages in flight against ``capacity`` (``settings.limits.max_queue``)."""

    def __init__(self, capacity: int, *, retry_after_s: float = 1.0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self._used = 0

    @property
    def depth(self) -> int:
        """Pages admitted and not yet released."""
        return self._used

    def admit(self, slots: int) -> Ticket:
        """Reserve ``slots`` pages or raise ``EngineOverloaded``.

        A request larger than the whole capacity is clamped to it, so a big document is still
        served when the server is otherwise idle (its pages then run ``capacity`` at a time).
        """
        wanted = max(1, min(slots, self.capacity))
        if self._used + wanted > self.capacity:
            raise EngineOverloaded(
                f"The server is at capacity ({self._used} of {self.capacity} pages in flight; "
                "DSOCR_LIMITS__MAX_QUEUE); retry later.",
                retry_after=self.retry_after_s,
            )
        self._used += wanted
        return Ticket(self, wanted)

    def _give_back(self, slots: int) -> None:
        self._used = max(0, self._used - slots)
