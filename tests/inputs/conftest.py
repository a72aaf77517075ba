"""Fixtures for dsocr.inputs: settings sections and a real HTTP server on loopback."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from inputs_support import LoopbackServer

from dsocr.settings import FetchSettings, LimitSettings


@pytest.fixture
def limits() -> LimitSettings:
    return LimitSettings()


@pytest.fixture
def loopback_server() -> Iterator[LoopbackServer]:
    state: LoopbackServer

    class _Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            state.requests.append((self.path, headers))
            route = state.routes.get(self.path.split("?", 1)[0])
            status, extra, body = route(self.path, headers) if route else (404, {}, b"not found")
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            if not state.omit_length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # The client may stop reading (byte cap, timeout): that is the point of those tests.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    state = LoopbackServer(port=server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def loopback_fetch() -> FetchSettings:
    """Fetch settings that trust loopback, as an operator would trust an internal object store."""
    return FetchSettings(allow_http=True, allow_networks=["127.0.0.0/8"], total_timeout_s=10)
