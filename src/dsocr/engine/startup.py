"""Where an engine's start is, and how long each of its phases took.

An engine that takes long to start (vLLM: importing, loading weights, compiling, capturing CUDA
graphs, the self-test) reports its phases here as they begin; ``/health`` shows the snapshot, the
log gets one line per finished phase, and ``/metrics`` the last start's seconds by phase. Times
are wall-clock seconds (``time.time``), so that phases timed in vLLM's engine-core process, on the
same host, line up with ours.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Protocol, runtime_checkable

__all__ = ["ReportsStart", "StartProgress", "process_started_at"]

logger = logging.getLogger("dsocr.engine.start")

_IMPORT_TIME = time.time()


def process_started_at() -> float:
    """When this process started (``time.time`` scale): from ``/proc`` on Linux, else when dsocr
    was first imported."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            # Field 22 is the start time in clock ticks after boot; the command name (field 2)
            # may hold spaces, so count from its closing parenthesis.
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _IMPORT_TIME
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


class StartProgress:
    """The phases of one start, in order. Thread-safe: phases may be marked from a worker thread."""

    def __init__(self, *, started_at: float | None = None) -> None:
        self._lock = threading.Lock()
        self._started_at = process_started_at() if started_at is None else started_at
        self._seconds: dict[str, float] = {}
        self._phase = "process_start"  # Python, imports, settings, the app: until the engine starts
        self._since = self._started_at
        self._ready_after: float | None = None

    @property
    def phase(self) -> str:
        return self._phase

    @property
    def phase_since(self) -> float:
        """When the current phase began (``time.time`` scale)."""
        return self._since

    @property
    def ready_after(self) -> float | None:
        """Seconds from process start to the end of the start, once it ended."""
        return self._ready_after

    def begin(self, phase: str, *, at: float | None = None) -> None:
        """Phase ``phase`` starts now (or at ``at``); the one before it ends then."""
        now = time.time() if at is None else at
        with self._lock:
            if self._ready_after is not None or phase == self._phase:
                return
            self._end_current(now)
            self._phase, self._since = phase, now

    def finish(self, *, ok: bool) -> None:
        """The start is over: ``ready``, or ``failed`` (the phase it failed in keeps its time)."""
        now = time.time()
        with self._lock:
            if self._ready_after is not None:
                return
            self._end_current(now)
            self._phase = "ready" if ok else "failed"
            self._ready_after = now - self._started_at
        logger.info(
            "engine %s %.2f s after the process started (%s)",
            "ready" if ok else "failed",
            self._ready_after,
            ", ".join(f"{name} {s:.2f} s" for name, s in self.seconds().items()),
        )

    def seconds(self) -> dict[str, float]:
        """Each finished phase's seconds, in the order they ran (a phase met twice adds up)."""
        with self._lock:
            return dict(self._seconds)

    def snapshot(self) -> dict[str, Any]:
        """``/health``'s ``engine.start``: the phase now, the finished phases' seconds; while the
        start runs, the phase's seconds so far and the seconds since the process started; once
        over, the seconds it took (so a finished start reads the same on every call)."""
        now = time.time()
        with self._lock:
            over = self._ready_after is not None
            return {
                "phase": self._phase,
                "phase_s": None if over else round(now - self._since, 3),
                "seconds": {name: round(s, 3) for name, s in self._seconds.items()},
                "elapsed_s": None if over else round(now - self._started_at, 3),
                "ready_after_s": None if self._ready_after is None else round(self._ready_after, 3),
            }

    def _end_current(self, now: float) -> None:
        spent = max(0.0, now - self._since)
        self._seconds[self._phase] = self._seconds.get(self._phase, 0.0) + spent
        logger.info("start phase %s took %.2f s", self._phase, spent)


@runtime_checkable
class ReportsStart(Protocol):
    """An engine that marks its own start's phases (the vLLM engine); others start in one phase."""

    start_progress: StartProgress
