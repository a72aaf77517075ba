"""Fixtures for engine tests: one started CPU engine per session (loading and warming up costs seconds)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from dsocr.engine.cpu import CpuEngine
from dsocr.settings import EngineSettings


@pytest.fixture(scope="session")
def cpu_engine() -> Iterator[CpuEngine]:
    # The engine holds no event-loop objects (its worker is a thread pool), so starting it on a
    # private loop and using it from each test's own loop is safe.
    engine = CpuEngine(EngineSettings(kind="cpu"))
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())
