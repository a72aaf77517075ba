"""``dsocr.remote.RemoteServer`` against a real server on loopback, with the faults a restarting
server or a proxy in between causes injected on the way: busy answers, broken event streams."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from remote_support import fake_server, page, write_pdf

from dsocr import remote
from dsocr.engine.fake import FakeEngine
from dsocr.errors import ServerBusy
from dsocr.remote import RemoteServer, Upload, _events, request_fields

Rule = Callable[[httpx.Request], httpx.Response | None]


class Faults(httpx.AsyncBaseTransport):
    """Sends requests on to the real server, unless a rule answers first; ``cut`` ends event
    streams after their first ``page.done`` event (a proxy cutting long responses)."""

    def __init__(self, *rules: Rule, cut: bool = False) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.rules = rules
        self.cut = cut
        self.seen: list[tuple[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path))
        for rule in self.rules:
            answer = rule(request)
            if answer is not None:
                return answer
        response = await self.inner.handle_async_request(request)
        if self.cut and request.url.path.endswith("/events"):
            return httpx.Response(
                response.status_code, headers=response.headers, stream=_FirstPage(response.stream)
            )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class _FirstPage(httpx.AsyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        buffered = b""
        async for chunk in self._stream:
            buffered += chunk
            if b"event: page.done" in buffered and buffered.endswith(b"\n\n"):
                yield buffered
                return
        yield buffered

    async def aclose(self) -> None:
        await self._stream.aclose()


def _busy(times: int, path: str) -> Rule:
    left = [times]

    def rule(request: httpx.Request) -> httpx.Response | None:
        if request.url.path != path or left[0] == 0:
            return None
        left[0] -= 1
        body = {"error": {"type": "server_error", "code": "server_busy", "message": "busy right now"}}
        return httpx.Response(503, json=body, headers={"Retry-After": "7"})

    return rule


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's waits between tries, recorded instead of waited."""
    recorded: list[float] = []

    async def record(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(remote, "_sleep", record)
    return recorded


def _png(tmp_path: Path) -> Upload:
    path = tmp_path / "page.png"
    page("A page").save(path)
    return Upload(data=path.read_bytes(), filename="page.png")


async def test_a_busy_server_is_retried_after_its_retry_after(tmp_path: Path, waits: list[float]) -> None:
    faults = Faults(_busy(2, "/v1/ocr"))
    with fake_server(tmp_path) as server:
        async with RemoteServer(server.url, transport=faults) as client:
            document = await client.ocr(_png(tmp_path), request_fields(outputs=["raw"]))
    assert document["pages"][0]["raw"]
    assert faults.seen.count(("POST", "/v1/ocr")) == 3
    assert waits == [7, 7]


async def test_a_server_busy_for_longer_than_retry_s_raises_its_error(
    tmp_path: Path, waits: list[float]
) -> None:
    faults = Faults(_busy(1000, "/v1/ocr"))
    with fake_server(tmp_path) as server:
        async with RemoteServer(server.url, transport=faults, retry_s=0) as client:
            with pytest.raises(ServerBusy, match="busy right now"):
                await client.ocr(_png(tmp_path), request_fields(outputs=["raw"]))
    assert faults.seen == [("POST", "/v1/ocr")]


async def _run_job(
    tmp_path: Path, faults: Faults, pages: int
) -> tuple[list[int], list[tuple[int, int | None]]]:
    source = write_pdf(tmp_path / "doc.pdf", [(300, 400)] * pages, "doc")
    delivered: list[int] = []
    progress: list[tuple[int, int | None]] = []

    async def on_page(page_json: dict[str, Any]) -> None:
        assert page_json["raw"]
        delivered.append(page_json["page"])

    with fake_server(tmp_path, FakeEngine(delay_s=0.05), jobs={"window": 1}) as server:
        async with RemoteServer(server.url, transport=faults, poll_s=0.05) as client:
            await client.run_job(
                Upload(data=source.read_bytes(), filename="doc.pdf"),
                request_fields(outputs=["raw"]),
                on_page=on_page,
                on_progress=lambda done, total: progress.append((done, total)),
            )
    return delivered, progress


async def test_pages_come_once_through_event_streams_that_keep_breaking(tmp_path: Path) -> None:
    faults = Faults(cut=True)
    delivered, progress = await _run_job(tmp_path, faults, pages=6)
    assert sorted(delivered) == [1, 2, 3, 4, 5, 6]
    assert progress[-1] == (6, 6)
    # Streams that brought nothing new gave way to polling the job, then reading its result.
    events = [path for method, path in faults.seen if path.endswith("/events")]
    assert len(events) >= 2
    assert any(path.endswith("/result") for _, path in faults.seen)


async def test_a_proxy_that_does_not_pass_events_on_leaves_polling(tmp_path: Path) -> None:
    def html_for_events(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, text="<html>buffered</html>", headers={"Content-Type": "text/html"})
        return None

    faults = Faults(html_for_events)
    delivered, progress = await _run_job(tmp_path, faults, pages=4)
    assert sorted(delivered) == [1, 2, 3, 4]
    assert progress[-1] == (4, 4)
    polls = [path for method, path in faults.seen if re.fullmatch(r"/v1/jobs/[0-9a-f]+", path)]
    assert polls


async def test_the_event_stream_parser_follows_the_sse_rules() -> None:
    async def lines() -> AsyncIterator[str]:
        for line in [
            ": a comment",
            "event: page.done",
            "data: {",
            'data:  "page": 1}',
            "",
            "event: nothing",
            "",
            "data: plain",
            "",
        ]:
            yield line

    assert [event async for event in _events(lines())] == [
        ("page.done", '{\n "page": 1}'),
        ("message", "plain"),
    ]


def test_the_progress_bar_of_a_job_appears_once_its_size_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from dsocr import progress

    screen = io.StringIO()
    monkeypatch.setattr(
        progress, "Console", lambda stderr: Console(file=screen, force_terminal=True, width=100)
    )
    with progress.progress_counter(quiet=False) as update:
        update(0, None)
        assert screen.getvalue() == ""  # the server has not opened the document yet
        for done in (1, 2, 3):
            update(done, 3)
    assert "3/3" in screen.getvalue()
    with progress.progress_counter(quiet=False) as update:
        screen.truncate(0)
        update(1, 1)  # one page needs no bar
    assert screen.getvalue() == ""
