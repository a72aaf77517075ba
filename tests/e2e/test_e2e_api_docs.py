"""``/docs`` and ``/openapi.json`` on a real server: shipped assets only, and behind the API keys."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

import httpx
import pytest

from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings
from server_support import Server, running_server

API_KEY = "e2e-docs-key"


@pytest.fixture(scope="module")
def open_server() -> Iterator[Server]:
    with running_server(Settings(engine={"kind": "fake"}), FakeEngine()) as running:
        yield running


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[Server]:
    settings = Settings(engine={"kind": "fake"}, server={"api_keys": [API_KEY]})
    with running_server(settings, FakeEngine()) as running:
        yield running


def _asset_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)


def test_docs_page_loads_only_same_origin_assets_that_the_server_ships(open_server: Server) -> None:
    with httpx.Client(base_url=open_server.url, timeout=30) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        urls = _asset_urls(page.text)
        assert any(url.endswith(".js") for url in urls) and any(url.endswith(".css") for url in urls)
        for url in urls:
            # Same origin: an absolute path, never a scheme or a protocol-relative host.
            assert url.startswith("/") and not url.startswith("//"), url
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert asset.content
        # Nothing but this server may be reached from the page.
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        # The init script points Swagger UI at this server's schema.
        init = next(url for url in urls if url.endswith("docs.js"))
        assert "openapi.json" in client.get(init).text
        assert client.get("/openapi.json").json()["info"]["title"] == "dsocr"


def test_swagger_ui_ships_with_its_licence(open_server: Server) -> None:
    with httpx.Client(base_url=open_server.url, timeout=30) as client:
        licence = client.get("/static/vendor/swagger-ui/LICENSE")
        assert licence.status_code == 200
        assert "Apache License" in licence.text


def test_redoc_is_not_served(open_server: Server) -> None:
    assert httpx.get(f"{open_server.url}/redoc", timeout=30).status_code == 404


@pytest.mark.parametrize("path", ["/docs", "/openapi.json"])
def test_docs_need_a_key_when_keys_are_set(keyed_server: Server, path: str) -> None:
    with httpx.Client(base_url=keyed_server.url, timeout=30) as client:
        missing = client.get(path)
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "unauthorized"
        # A browser asks for the key (as the password) and sends it as Basic credentials.
        assert missing.headers["www-authenticate"].startswith("Basic")
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(path, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
        assert client.get(path, headers={"X-Api-Key": API_KEY}).status_code == 200
        basic = base64.b64encode(f"anyone:{API_KEY}".encode()).decode()
        assert client.get(path, headers={"Authorization": f"Basic {basic}"}).status_code == 200
        wrong = base64.b64encode(b"anyone:guess").decode()
        assert client.get(path, headers={"Authorization": f"Basic {wrong}"}).status_code == 401


def test_basic_credentials_from_the_docs_login_work_on_the_api(keyed_server: Server) -> None:
    # Swagger's "Try it out" runs in the browser that logged in to /docs, which resends them.
    basic = base64.b64encode(f":{API_KEY}".encode()).decode()
    response = httpx.get(
        f"{keyed_server.url}/v1/models", headers={"Authorization": f"Basic {basic}"}, timeout=30
    )
    assert response.status_code == 200
    # API routes do not invite a browser login prompt: their challenge stays Bearer.
    assert httpx.get(f"{keyed_server.url}/v1/models", timeout=30).headers["www-authenticate"] == "Bearer"


def test_open_docs_setting_opens_them_with_keys_set() -> None:
    settings = Settings(engine={"kind": "fake"}, server={"api_keys": [API_KEY], "open_docs": True})
    with running_server(settings, FakeEngine()) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/docs").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        # Only the documentation opens.
        assert client.get("/v1/models").status_code == 401
