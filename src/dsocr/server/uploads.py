"""Upload bodies read a few at a time, first come first served (``UploadGate``).

One event loop reads every request body. Under a burst of large uploads (256 A4 pages, 250 KB of
base64 each) read all at once, every body advances a chunk at a time in turn, so they all finish
late and at about the same time, and only then are the pages decoded and sent to the engine: on
an H100 host the first page of such a burst reaches the engine 1–2.7 s in, while offline it is
there within 0.1 s and the GPU starts at once. With ``upload_slots`` (16) bodies read at a time,
in arrival order, the first pages are decoded and in the engine's batch while the rest are still
being read: the first page is there 0.35–0.51 s in; the burst's last page and its pages/s do not
move (bench/README.md).

A slot is taken at the request's first body read and given back after its last byte, when the
client goes away or the app is done with the request — and after ``upload_slot_s`` at the
latest, so a slow sender keeps its place only that long. No request waits more than
``upload_slot_s`` for a slot either: past that it is read without one. The gate orders uploads;
it never holds one back by more than ``upload_slot_s``. Small bodies (under ``_GATED_BYTES``,
such as a URL to fetch) are never gated.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["UploadGate", "UploadSlots", "content_length"]

# Bodies at least this long (by Content-Length; chunked bodies always) wait for a slot.
_GATED_BYTES = 64 * 1024


class UploadSlots:
    """``count`` slots for reading upload bodies (0: no limit), each held ``hold_s`` at most."""

    def __init__(self, count: int, hold_s: float) -> None:
        if count < 0 or hold_s <= 0:
            raise ValueError("count must be >= 0 and hold_s > 0")
        self.hold_s = hold_s
        self.count = count
        self._semaphore = asyncio.Semaphore(count) if count else None

    async def take(self) -> _Slot | None:
        """A slot, in arrival order; ``None`` without a limit or after waiting ``hold_s`` in vain."""
        semaphore = self._semaphore
        if semaphore is None:
            return None
        try:
            await asyncio.wait_for(semaphore.acquire(), self.hold_s)
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
            return None
        return _Slot(semaphore, self.hold_s)


class _Slot:
    """One taken slot; ``release`` is idempotent and also runs by itself after ``hold_s``."""

    def __init__(self, semaphore: asyncio.Semaphore, hold_s: float) -> None:
        self._semaphore = semaphore
        self._timer = asyncio.get_running_loop().call_later(hold_s, self.release)
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._timer.cancel()
            self._semaphore.release()


class UploadGate:
    """ASGI middleware: large request bodies are read ``slots.count`` at a time (``UploadSlots``)."""

    def __init__(self, app: ASGIApp, *, slots: UploadSlots) -> None:
        self.app = app
        self.slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.slots.count or not _large_body(scope):
            await self.app(scope, receive, send)
            return
        slot: _Slot | None = None
        asked = False

        async def gated_receive() -> Message:
            nonlocal slot, asked
            if not asked:
                asked = True
                slot = await self.slots.take()
            message = await receive()
            last = message["type"] != "http.request" or not message.get("more_body", False)
            if slot is not None and last:
                slot.release()  # the last byte is in, or the client is gone
            return message

        try:
            await self.app(scope, gated_receive, send)
        finally:
            if slot is not None:
                slot.release()


def content_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``; ``None`` when absent or not a number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _large_body(scope: Scope) -> bool:
    length = content_length(scope)
    if length is not None:
        return length >= _GATED_BYTES
    headers = scope.get("headers", ())
    return any(name == b"transfer-encoding" and b"chunked" in value.lower() for name, value in headers)
