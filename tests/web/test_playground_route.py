"""``GET /`` and ``/static``: the playground is served from the package, open, and locked down by CSP.

No browser needed: these run everywhere, the chromium tests (test_playground.py) only where it is installed.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser

import httpx
import pytest
from asgi_lifespan import LifespanManager

from dsocr.engine.fake import FakeEngine
from dsocr.server.app import create_app
from dsocr.settings import Settings

KEY = "route-test-key"


class _AssetLinks(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            value = values.get(name)
            if value and value.startswith("/static/"):
                self.links.append(value)
        if tag == "script" and not values.get("src"):
            self.inline_scripts += 1
        if any(name.startswith("on") for name in values):
            self.inline_scripts += 1


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(server={"api_keys": [KEY]}), engine=FakeEngine())
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as http,
    ):
        yield http


async def test_root_serves_the_page_without_a_key_while_the_api_still_needs_one(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>dsocr playground</title>" in page.text
    assert (await client.post("/v1/ocr", json={"image_url": "https://example.com/a.png"})).status_code == 401


async def test_root_forbids_inline_and_remote_scripts(client: httpx.AsyncClient) -> None:
    policy = (await client.get("/")).headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert "unsafe-inline" not in policy


async def test_every_asset_the_page_and_its_modules_load_is_served(client: httpx.AsyncClient) -> None:
    parser = _AssetLinks()
    parser.feed((await client.get("/")).text)
    assert parser.inline_scripts == 0, "the CSP would block inline script"
    assert "/static/app.js" in parser.links
    links = set(parser.links)
    # ES module imports of app.js ("./vendor/…" relative to /static/).
    app_js = (await client.get("/static/app.js")).text
    links |= {"/static/" + path.removeprefix("./") for path in re.findall(r'from "(\./[^"]+)"', app_js)}
    assert "/static/vendor/marked.esm.js" in links
    for link in sorted(links):
        response = await client.get(link)
        assert response.status_code == 200, link
        expected = "text/javascript" if link.endswith((".js", ".mjs")) else ""
        assert response.headers["content-type"].startswith(expected), link


async def test_unknown_static_paths_are_404_not_the_page(client: httpx.AsyncClient) -> None:
    assert (await client.get("/static/nope.js")).status_code == 404
    # Path traversal out of static/ (percent-encoded, so the client does not normalise it away).
    assert (await client.get("/static/%2e%2e/settings.py")).status_code == 404
    assert (await client.get("/static/..%2fsettings.py")).status_code == 404


def test_vendored_libraries_ship_with_their_licences() -> None:
    vendor = importlib.resources.files("dsocr").joinpath("static", "vendor")
    names = {item.name for item in vendor.iterdir()}
    assert {"marked.esm.js", "marked.LICENSE.txt", "purify.min.js", "dompurify.LICENSE.txt"} <= names
    assert "MIT" in vendor.joinpath("marked.LICENSE.txt").read_text(encoding="utf-8")
    assert "Apache License" in vendor.joinpath("dompurify.LICENSE.txt").read_text(encoding="utf-8")
