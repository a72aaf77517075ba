"""Fake engines with one scripted fault, shared by the API and e2e tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

from dsocr.engine.base import EngineDelta, EngineRequest
from dsocr.engine.fake import FakeEngine
from dsocr.errors import EngineError


class FailsOnPageTwo(FakeEngine):
    """The fake engine, except that page 2 of any document fails in the engine."""

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        if request.request_id.endswith("-p2"):
            raise EngineError("the engine crashed on this page")
        async for delta in super().stream(request):
            yield delta
