"""API tests: ``create_app(settings, engine=FakeEngine(...))`` driven in process through ASGI.

Images are drawn with Pillow; PDFs are written by Pillow and rasterised by the server's pypdfium2.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from api_support import ClientFactory
from asgi_lifespan import LifespanManager

from dsocr.engine.base import Engine
from dsocr.engine.fake import FakeEngine
from dsocr.server.app import create_app
from dsocr.settings import Settings


@pytest.fixture
def make_client() -> ClientFactory:
    """``async with make_client(settings=..., engine=...) as client`` — app with its lifespan running."""

    @asynccontextmanager
    async def factory(
        settings: Settings | None = None, engine: Engine | None = None, *, raise_app_exceptions: bool = True
    ) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(
            settings if settings is not None else Settings(engine={"kind": "fake"}),
            engine=engine if engine is not None else FakeEngine(),
        )
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(manager.app, raise_app_exceptions=raise_app_exceptions)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                client.app = app  # type: ignore[attr-defined]
                yield client

    return factory


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncIterator[httpx.AsyncClient]:
    """A client on an app with the default settings and a fresh FakeEngine."""
    async with make_client() as c:
        yield c
