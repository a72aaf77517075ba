"""Helpers shared by the dsocr.inputs tests: real images and a real HTTP server on loopback."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image, ImageDraw


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def text_page(size: tuple[int, int] = (200, 120)) -> Image.Image:
    """A small white page with a black bar in the top-left corner (so orientation is visible)."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, size[0] // 4, size[1] // 8), fill="black")
    draw.text((10, size[1] // 2), "dsocr", fill="black")
    return image


# A handler answers (status, headers, body) for one request; it sees the request's path and headers.
Handler = Callable[[str, dict[str, str]], tuple[int, dict[str, str], bytes]]


@dataclass
class LoopbackServer:
    """A real HTTP server on 127.0.0.1 whose routes tests set, recording every request it got."""

    port: int
    routes: dict[str, Handler] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    # Send no Content-Length, so the body runs until the connection closes.
    omit_length: bool = False

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def serve(self, path: str, body: bytes, content_type: str = "image/png", status: int = 200) -> None:
        self.routes[path] = lambda _p, _h: (status, {"Content-Type": content_type}, body)

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.routes[path] = lambda _p, _h: (status, {"Location": location}, b"")
