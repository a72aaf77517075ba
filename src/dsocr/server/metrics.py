"""Prometheus metrics, one registry per app (so tests and several apps in a process never clash).

With several server processes (``PROMETHEUS_MULTIPROC_DIR`` set, as ``dsocr serve --workers N``
does on the CPU and fake engines) every process writes its values there and ``GET /metrics`` sums
them over all processes.

``MetricsMiddleware`` counts every HTTP request by route template and status and times it, and is
the one place that counts error answers (``dsocr_errors_total{scope="request"}``, by the code of
the error body) and clients that left before their answer (``dsocr_aborted_requests_total``). The
OCR routes record pages and tokens through :class:`Metrics`, and errors sent inside an event
stream, whose status was 200. ``GET /metrics`` renders the registry in the text exposition format.

Every engine also reports its readiness (``dsocr_engine_ready``, what ``/ready`` says) and the
build (``dsocr_build_info``). The vLLM engine adds vLLM's own ``vllm:*`` series: vLLM's Prometheus
stat logger keeps them in prometheus_client's global registry (``_VLLMSeries`` copies them into
this app's); the vLLM engine always runs in one server process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dsocr.results import PageResult

__all__ = ["Metrics", "MetricsMiddleware", "multiprocess_metrics"]

# OCR pages take from under a second (small image, fake engine) to minutes (dense PDF page on CPU).
_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


@contextlib.contextmanager
def multiprocess_metrics() -> Iterator[None]:
    """Multiprocess mode for the server processes started inside (they inherit the variable).

    prometheus_client picks the mode when it is imported, so this must wrap the start of the
    processes, not run in them. An operator's own ``PROMETHEUS_MULTIPROC_DIR`` is kept.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    path = tempfile.mkdtemp(prefix="dsocr-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(path, ignore_errors=True)


class _VLLMSeries(Collector):
    """vLLM's ``vllm:*`` families from prometheus_client's global registry, where vLLM's
    Prometheus stat logger registers them; none without a vLLM engine in this process.

    vLLM keeps one set per process (each new logger unregisters the previous one's), so with
    several vLLM engines in one process (replicas, extra models) they are the last started one's.
    """

    def collect(self) -> Iterable[Metric]:
        return [family for family in REGISTRY.collect() if family.name.startswith("vllm:")]

    def describe(self) -> Iterable[Metric]:
        # Nothing to check for clashes: the names are vLLM's and appear only once vLLM starts.
        return []


class Metrics:
    """The metric families of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "dsocr_http_requests",
            "HTTP requests by route and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "dsocr_http_request_duration_seconds",
            "Time from request start to the last byte sent.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # "livesum": over several processes, the sum over those alive.
        self.in_flight = Gauge(
            "dsocr_http_requests_in_flight",
            "HTTP requests being served.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_depth = Gauge(
            "dsocr_queue_depth_pages",
            "Pages admitted and not finished (vs DSOCR_LIMITS__MAX_QUEUE, a per-process limit).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.pages = Counter("dsocr_pages", "Pages processed, by outcome.", ["outcome"], registry=r)
        self.page_latency = Histogram(
            "dsocr_page_duration_seconds",
            "Time per page, load to result.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("dsocr_prompt_tokens", "Prompt tokens (incl. vision).", registry=r)
        self.vision_tokens = Counter("dsocr_vision_tokens", "Vision tokens of the page images.", registry=r)
        self.output_tokens = Counter("dsocr_output_tokens", "Generated tokens.", registry=r)
        self.cache_lookups = Counter(
            "dsocr_cache_lookups",
            "Pages looked up in the result cache, by result (hit: answered without the engine).",
            ["result"],
            registry=r,
        )
        for result in ("hit", "miss"):
            self.cache_lookups.labels(result=result)  # both series exist from the start, at 0
        self.errors = Counter(
            "dsocr_errors",
            "Errors by code: error answers and errors inside streams (scope=request), failed pages (page).",
            ["code", "scope"],
            registry=r,
        )
        self.aborts = Counter(
            "dsocr_aborted_requests",
            "Requests abandoned by their client before the answer ended (their engine work is aborted).",
            ["reason"],
            registry=r,
        )
        # "livemin": with several server processes, 1 only while every one of them is ready.
        self.engine_ready = Gauge(
            "dsocr_engine_ready",
            "1 while the engine is ready (as /ready says), 0 while it starts, failed or is unhealthy.",
            registry=r,
            multiprocess_mode="livemin",
        )
        # A gauge, not prometheus_client's Info, which has no multiprocess mode.
        self.build_info = Gauge(
            "dsocr_build_info",
            "The running build: dsocr's version, the engine and the served model (always 1).",
            ["version", "engine", "model"],
            registry=r,
            multiprocess_mode="max",
        )
        self._build: tuple[str, str, str] | None = None
        # "max": with several server processes, the slowest one's start.
        self.engine_start = Gauge(
            "dsocr_engine_start_seconds",
            'The last engine start: seconds spent in each phase, and phase="total" from process '
            "start to ready (or failed).",
            ["phase"],
            registry=r,
            multiprocess_mode="max",
        )
        r.register(_VLLMSeries())

    def set_engine_ready(self, ready: bool) -> None:
        """Record whether the engine is ready (the app on every change, ``/metrics`` on each scrape)."""
        self.engine_ready.set(1 if ready else 0)

    def observe_start(self, seconds: Mapping[str, float], total: float) -> None:
        """Record a finished engine start: each phase's seconds and the total."""
        for phase, spent in seconds.items():
            self.engine_start.labels(phase=phase).set(spent)
        self.engine_start.labels(phase="total").set(total)

    def describe_build(self, *, version: str, engine: str, model: str) -> None:
        """Set ``dsocr_build_info`` once: a second set of labels would leave two series behind
        (label sets cannot be removed in multiprocess mode)."""
        if self._build is None:
            self._build = (version, engine, model)
            self.build_info.labels(version=version, engine=engine, model=model).set(1)

    def close(self) -> None:
        """This process stops serving: with several processes, its "live" gauges (readiness,
        requests in flight) leave the aggregates, as a process manager's exit hook would do."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    def observe_page(self, result: PageResult) -> None:
        """Record one page's outcome, time, cache lookup and token usage (the pipeline calls it for
        every page). Tokens count the engine's work: a page answered from the cache adds none."""
        if result.error is not None:
            self.pages.labels(outcome="error").inc()
            self.errors.labels(code=result.error.code, scope="page").inc()
        else:
            self.pages.labels(outcome="truncated" if result.finish_reason == "length" else "ok").inc()
        self.page_latency.observe(result.timings.total_s)
        if result.cached is not None:
            self.cache_lookups.labels(result="hit" if result.cached else "miss").inc()
        if not result.cached:
            usage = result.usage
            self.prompt_tokens.inc(usage.prompt_tokens)
            self.vision_tokens.inc(usage.vision_tokens)
            self.output_tokens.inc(usage.completion_tokens)

    def observe_error(self, code: str) -> None:
        """Record a request-level error (``MetricsMiddleware`` does it for every error answer)."""
        self.errors.labels(code=code, scope="request").inc()

    def render(self) -> bytes:
        """The registry in Prometheus text format (summed over the server's processes, if several)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)


def _route_template(scope: Scope) -> str:
    """The matched route's path template (``/v1/ocr``), never the raw path (unbounded labels).

    The router records the matched route in the (shared) scope; unmatched requests (404) and
    requests rejected before routing (413 on Content-Length) share one label.
    """
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"


# nginx's "client closed request": what a route answers when its client left (nobody reads it).
_CLIENT_CLOSED_REQUEST = 499
# Error bodies are a few hundred bytes; more than this is not read for its code.
_ERROR_BODY_BYTES = 16 * 1024


def _error_code(status: int, body: bytes) -> str:
    """The ``code`` of an error envelope; ``http_<status>`` for a body that is not one."""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, RecursionError, TypeError, KeyError):
        return f"http_{status}"
    return code if isinstance(code, str) else f"http_{status}"


class MetricsMiddleware:
    """Counts and times HTTP requests (pure ASGI, so streamed bodies are timed to the end).

    Also the one place that counts errors and abandoned requests, whatever produced them (a
    route, an exception handler, a middleware): an answer of status 400 or more counts once in
    ``dsocr_errors_total{scope="request"}`` under its envelope's ``code``, except ``/ready``'s
    503, which reports readiness and fails no request. A client that left counts once in
    ``dsocr_aborted_requests_total{reason="client_disconnect"}`` (status 499): a route's 499, or
    a request whose client went away before its answer ended (mid-upload, mid-stream).
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()
        response_started = response_ended = client_left = False
        error_body = bytearray()

        async def receive_wrapper() -> Message:
            nonlocal client_left
            message = await receive()
            if message["type"] == "http.disconnect" and not response_ended:
                client_left = True
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started, response_ended, client_left
            last = False
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
            elif message["type"] == "http.response.body":
                if status >= 400 and len(error_body) < _ERROR_BODY_BYTES:
                    error_body.extend(message.get("body", b""))
                last = not message.get("more_body", False)
            try:
                await send(message)
            except OSError:
                # A server on ASGI spec 2.4 reports the client's departure this way.
                client_left = True
                raise
            response_ended = response_ended or last

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            abandoned = status == _CLIENT_CLOSED_REQUEST or (client_left and not response_ended)
            if abandoned and not response_started:
                status = _CLIENT_CLOSED_REQUEST
            route = _route_template(scope)
            self.metrics.requests.labels(route=route, method=scope["method"], status=str(status)).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - started)
            if abandoned:
                self.metrics.aborts.labels(reason="client_disconnect").inc()
            elif not response_started:
                # An exception escaped: the server's error middleware answers 500 internal_error.
                self.metrics.observe_error("internal_error")
            elif status >= 400 and not (route == "/ready" and status == 503):
                self.metrics.observe_error(_error_code(status, bytes(error_body)))
