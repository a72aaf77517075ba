"""``/metrics`` reports the engine's readiness and the build, on a real server on loopback.

``dsocr_engine_ready`` must say what ``/ready`` says (starting, ready, failed, gone unhealthy), so
that an alert on the gauge and a load balancer's probe never disagree; ``dsocr_build_info`` names
the version, the engine and the served model.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from dsocr import __version__
from dsocr.engine.fake import FakeEngine
from dsocr.errors import EngineUnavailable
from dsocr.settings import Settings
from server_support import dsocr_serve, running_server

SERVED = "ocr-under-test"


def settings(**server: object) -> Settings:
    return Settings(engine={"kind": "fake", "served_model_name": SERVED}, server=server)


def samples(base: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` in ``base``/metrics, as (labels, value)."""
    response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    return [
        (dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == name
    ]


def engine_ready(base: str) -> float:
    (only,) = samples(base, "dsocr_engine_ready")
    assert only[0] == {}
    return only[1]


class GatedStart(FakeEngine):
    """A fake whose start waits until the test opens the gate (a thread event: the server runs
    in another thread and loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    async def start(self) -> None:
        await asyncio.to_thread(self.gate.wait, 30)
        await super().start()


def test_a_ready_engine_reads_1_with_the_build_named() -> None:
    with running_server(settings(), FakeEngine()) as server:
        assert httpx.get(f"{server.url}/ready", timeout=10).status_code == 200
        assert engine_ready(server.url) == 1
        assert samples(server.url, "dsocr_build_info") == [
            ({"version": __version__, "engine": "fake", "model": SERVED}, 1.0)
        ]


def test_an_engine_that_failed_to_start_reads_0() -> None:
    broken = FakeEngine(start_error=EngineUnavailable("no weights at /models/ocr"))
    with running_server(settings(), broken) as server:
        ready = httpx.get(f"{server.url}/ready", timeout=10)
        assert ready.status_code == 503
        assert "no weights" in ready.json()["reason"]
        assert engine_ready(server.url) == 0
        # The build is still told: the scrape is how an operator sees what failed to start.
        assert [labels for labels, _ in samples(server.url, "dsocr_build_info")] == [
            {"version": __version__, "engine": "fake", "model": SERVED}
        ]


def test_the_gauge_follows_a_starting_engine_to_ready() -> None:
    engine = GatedStart()
    with running_server(settings(startup_wait_s=0.0), engine) as server:
        try:
            assert httpx.get(f"{server.url}/ready", timeout=10).status_code == 503
            assert engine_ready(server.url) == 0
        finally:
            engine.gate.set()
        for _ in range(200):
            if httpx.get(f"{server.url}/ready", timeout=10).status_code == 200:
                break
            time.sleep(0.05)
        assert engine_ready(server.url) == 1


def test_an_engine_gone_unhealthy_after_start_reads_0() -> None:
    engine = FakeEngine()
    with running_server(settings(), engine) as server:
        assert engine_ready(server.url) == 1
        # The engine stops answering its health check (a dead vLLM engine core does this).
        asyncio.run(engine.close())
        assert httpx.get(f"{server.url}/ready", timeout=10).status_code == 503
        assert engine_ready(server.url) == 0


def answering_pids(base: str, *, want: int) -> set[int]:
    """The server processes seen answering ``/health`` (fresh connections spread over them)."""
    seen: set[int] = set()
    deadline = time.monotonic() + 30
    while len(seen) < want and time.monotonic() < deadline:
        seen.add(httpx.get(f"{base}/health", timeout=10).json()["pid"])
    return seen


def test_a_replaced_worker_leaves_no_stale_readiness_behind(tmp_path: Path) -> None:
    # With --workers the gauge is the least over the processes: a worker that stopped must leave
    # that minimum, or its last word ("shutting down", 0) would hold the gauge at 0 for good.
    log = tmp_path / "serve.log"
    with (
        log.open("w") as log_file,
        dsocr_serve(
            "--engine", "fake", "--workers", "2", "--log-level", "warning",
            stdout=log_file, stderr=subprocess.STDOUT, output=lambda: log.read_text(errors="replace"),
        ) as (base, _),
    ):  # fmt: skip
        first = answering_pids(base, want=2)
        assert len(first) == 2
        assert engine_ready(base) == 1
        retired = min(first)
        os.kill(retired, signal.SIGTERM)  # uvicorn replaces a worker that exits
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if len(answering_pids(base, want=2) - first) == 1:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("the stopped worker was not replaced")
        for _ in range(4):
            assert engine_ready(base) == 1


def test_serve_logs_each_start_phase_and_reports_them(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with (
        log.open("w") as log_file,
        dsocr_serve(
            "--engine", "fake", stdout=log_file, stderr=subprocess.STDOUT,
            output=lambda: log.read_text(errors="replace"),
        ) as (base, _),
    ):  # fmt: skip
        start = httpx.get(f"{base}/health", timeout=10).json()["engine"]["start"]
        phases = dict(
            (labels["phase"], value) for labels, value in samples(base, "dsocr_engine_start_seconds")
        )
    text = log.read_text(errors="replace")
    # One line per finished phase, and one for the whole start, in the server's own log.
    assert start["phase"] == "ready"
    for phase in start["seconds"]:
        assert f"start phase {phase} took" in text, phase
    assert "engine ready" in text
    assert set(phases) == {*start["seconds"], "total"}
    assert abs(phases["total"] - start["ready_after_s"]) < 0.01
