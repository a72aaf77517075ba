"""``dsocr serve --workers N`` on the CPU and fake engines: N server processes on one socket.

The socket is bound here, in the parent, and every worker accepts on it (the kernel spreads the
connections). Each worker is a fresh
interpreter (``spawn``: the parent may already hold threads, and prometheus_client must be
imported after ``PROMETHEUS_MULTIPROC_DIR`` is set) that receives the parent's ``Settings``
object, pickled, builds the app with ``create_app(settings)`` (and with it its own engine) and
serves it with uvicorn. Settings never travel through the environment, so API keys given as
flags stay out of ``/proc/PID/environ``.

A worker that exits is replaced, as uvicorn's own supervisor does; one that exits again and again
right after its start stops them all, and the command exits non-zero. SIGINT and SIGTERM stop
every worker gracefully.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from typing import Any

from dsocr.errors import ConfigError, EngineUnavailable
from dsocr.server.metrics import multiprocess_metrics
from dsocr.settings import Settings

__all__ = ["serve_workers"]

logger = logging.getLogger(__name__)

# How long a worker gets to finish its requests and close its engine after SIGTERM.
_STOP_TIMEOUT_S = 30.0
# A worker that exits this soon after its start, this many times in a row, cannot serve.
_FAILED_START_S = 10.0
_FAILED_STARTS = 3


def _listening_socket(host: str, port: int) -> socket.socket:
    """The one socket every server process accepts on (bound before they start: no port race)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", field="server.port"
        ) from exc
    sock.set_inheritable(True)
    return sock


def serve_workers(settings: Settings, *, workers: int, log_level: str = "info") -> None:
    """Serve ``create_app(settings)`` from ``workers`` processes on ``settings.server``'s address.

    Blocks until SIGINT / SIGTERM, then returns once the workers have stopped. A worker that
    exits is replaced; one that keeps exiting right after its start raises ``EngineUnavailable``.
    """
    sock = _listening_socket(settings.server.host, settings.server.port)
    context = multiprocessing.get_context("spawn")
    running: dict[int, tuple[BaseProcess, float]] = {}
    quick_exits = [0] * workers

    def start(index: int) -> None:
        process = context.Process(
            target=run_worker, args=(settings, sock, log_level, index), name=f"dsocr-worker-{index}"
        )
        process.start()
        running[index] = (process, time.monotonic())

    with multiprocess_metrics(), _stop_on_sigterm():
        try:
            for index in range(workers):
                start(index)
            while True:
                multiprocessing.connection.wait([process.sentinel for process, _ in running.values()])
                for index, (process, started) in list(running.items()):
                    if process.exitcode is None:
                        continue
                    _forget(process)
                    quick = time.monotonic() - started < _FAILED_START_S
                    quick_exits[index] = quick_exits[index] + 1 if quick else 0
                    if quick_exits[index] >= _FAILED_STARTS:
                        raise EngineUnavailable(
                            f"stopping all server processes: {process.name} exited "
                            f"{_FAILED_STARTS} times in a row within {_FAILED_START_S:g} s of its "
                            f"start (last exit code {process.exitcode})"
                        )
                    logger.warning(
                        "%s (pid %s) exited with %s; starting another",
                        process.name,
                        process.pid,
                        process.exitcode,
                    )
                    start(index)
        except KeyboardInterrupt:
            pass
        finally:
            _stop([process for process, _ in running.values()])
            sock.close()


def run_worker(settings: Settings, sock: socket.socket, log_level: str, index: int) -> None:
    """Entry point of one spawned worker: build the app from ``settings`` and serve ``sock``."""
    import uvicorn

    from dsocr.server.app import Server, create_app

    logging.basicConfig(
        level=log_level.upper(),
        format=f"(worker {index} pid={os.getpid()}) %(levelname)s %(name)s: %(message)s",
    )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        log_level=log_level,
    )
    # uvicorn re-raises the SIGINT it stopped on (Ctrl-C reaches every process of the group).
    with contextlib.suppress(KeyboardInterrupt):
        Server(config).run(sockets=[sock])


def _forget(process: BaseProcess) -> None:
    """Drop a dead worker's "live" gauges from the summed metrics (it may not have done so itself)."""
    if process.pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(process.pid)  # type: ignore[no-untyped-call]


def _stop(processes: list[BaseProcess]) -> None:
    """SIGTERM (uvicorn's graceful shutdown) to the workers still running; SIGKILL to stragglers."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(_STOP_TIMEOUT_S)
        if process.is_alive():
            logger.warning("%s did not stop in %.0f s; killing it", process.name, _STOP_TIMEOUT_S)
            process.kill()
            process.join()


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the parent like Ctrl-C (a KeyboardInterrupt), which then stops its children."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
