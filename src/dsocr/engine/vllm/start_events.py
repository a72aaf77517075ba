"""vLLM's start-up phases, timed where they run and read back by the server.

vLLM builds the model in its engine-core process (or the worker processes under it), where the
server cannot see which step it is in. dsocr's worker extension (dsocr.engine.vllm.worker) is
imported there before the worker's first start-up call; it wraps those calls so that each writes
a begin and an end line to a file the server named (``DSOCR_START_EVENTS``). The server polls
the file while the engine builds and turns the lines into phases of its ``StartProgress``.

Only vLLM's worker methods are wrapped, by name; a vLLM without one of them simply reports fewer
phases (the time then counts as ``engine_core``).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsocr.engine.startup import StartProgress

__all__ = ["ENV", "WORKER_PHASES", "EventReader", "instrument_workers"]

ENV = "DSOCR_START_EVENTS"

# vLLM's worker start-up calls, in the order the engine core makes them, and the phase each is.
WORKER_PHASES: dict[str, str] = {
    "init_device": "initialising_device",
    "load_model": "loading_weights",
    # the profile run: the first forward passes, in which torch.compile compiles (or loads) the model
    "determine_available_memory": "compiling",
    "initialize_from_config": "allocating_kv_cache",
    # warm-up runs and CUDA graph capture
    "compile_or_warm_up_model": "capturing_graphs",
}
# The engine core's own work between the worker's calls (process start, imports, scheduling set-up).
ENGINE_CORE = "engine_core"

_WORKER_MODULES = ("vllm.v1.worker.gpu_worker", "vllm.v1.worker.cpu_worker")
_WRAPPED = "_dsocr_start_event"
_running: set[str] = set()  # phases running in this process (a subclass's call reaching its base's)


def instrument_workers() -> None:
    """Wrap the start-up calls of vLLM's worker classes already imported in this process;
    idempotent. A call writes events only while the server asks for them (``DSOCR_START_EVENTS``)."""
    for module_name in _WORKER_MODULES:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for cls in vars(module).values():
            if not isinstance(cls, type) or cls.__module__ != module_name:
                continue
            for method, phase in WORKER_PHASES.items():
                original = cls.__dict__.get(method)
                if callable(original) and not hasattr(original, _WRAPPED):
                    setattr(cls, method, _timed(original, phase))


def _timed(method: Callable[..., Any], phase: str) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        path = os.environ.get(ENV)
        if not path or phase in _running:  # not asked, or an override calling its base: one phase
            return method(*args, **kwargs)
        _running.add(phase)
        _write(path, phase, "begin")
        try:
            return method(*args, **kwargs)
        finally:
            _running.discard(phase)
            _write(path, phase, "end")

    setattr(call, _WRAPPED, True)
    return call


def _write(path: str, phase: str, event: str) -> None:
    line = json.dumps({"phase": phase, "event": event, "at": time.time(), "pid": os.getpid()}) + "\n"
    try:
        # One short append per line: lines from several worker processes do not interleave.
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
    except OSError:  # a report, never a reason to fail the start
        pass


class EventReader:
    """Reads the events file from where it stopped and marks the phases in ``progress``."""

    def __init__(self, path: Path, progress: StartProgress) -> None:
        self._path = path
        self._progress = progress
        self._offset = 0
        self._active: dict[str, set[int]] = {}

    def poll(self) -> None:
        try:
            with self._path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        self._offset += len(complete)
        for raw in complete.splitlines():
            try:
                event = json.loads(raw)
                phase, kind, at, pid = event["phase"], event["event"], float(event["at"]), int(event["pid"])
            except (ValueError, KeyError, TypeError):
                continue
            self._apply(str(phase), str(kind), at, pid)

    def _apply(self, phase: str, kind: str, at: float, pid: int) -> None:
        pids = self._active.setdefault(phase, set())
        if kind == "begin":
            pids.add(pid)
            self._progress.begin(phase, at=at)
        elif kind == "end":
            pids.discard(pid)
            # With several workers the phase lasts until the last one is done.
            if not pids and self._progress.phase == phase:
                self._progress.begin(ENGINE_CORE, at=at)
