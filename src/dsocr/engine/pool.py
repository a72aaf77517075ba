"""``EnginePool``: N engines behind the one ``Engine`` protocol, balanced by queue depth.

Each request goes to the engine with the fewest requests in flight through this pool (its queue
depth as the pool sees it); ties go round-robin, so an idle pool spreads a burst evenly. A slow
or busy engine therefore gets fewer new requests while its queue is long, without any timing
model. ``abort`` goes to the engine that owns the request id.

Health is "any": the pool serves while at least one engine is healthy. An engine that fails a
health check, or raises ``EngineUnavailable`` on a request, is taken out of rotation until a
later ``check_health`` finds it healthy again; only when every engine is out does the pool
raise ``EngineUnavailable`` (so ``/ready`` turns 503). A request that was running on an engine
that failed is not retried elsewhere: its caller gets the error, as with a single engine.

Uses: one vLLM engine per GPU of a host (``DSOCR_ENGINE__REPLICAS``, each pinned to its GPU by
``dsocr.engine.factory``), or N CPU engines. vLLM's own data parallelism is the other way to use
several GPUs (``DSOCR_ENGINE__VLLM__DATA_PARALLEL_SIZE``); docs/serving.md compares the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence

from dsocr.engine.base import Engine, EngineDelta, EngineInfo, EngineOutput, EngineRequest
from dsocr.errors import EngineUnavailable

__all__ = ["EnginePool"]

logger = logging.getLogger(__name__)


class EnginePool:
    """Fronts ``engines`` (all serving the same model) as one engine; see the module docstring.

    ``start_together``: start the engines concurrently (independent processes, e.g. CPU engines)
    or one after another (vLLM engines: each start compiles and profiles memory, and doing that
    in parallel in one process is not something vLLM promises to support).
    """

    def __init__(self, engines: Sequence[Engine], *, start_together: bool = True) -> None:
        if not engines:
            raise ValueError("an EnginePool needs at least one engine")
        self._engines: tuple[Engine, ...] = tuple(engines)
        self._start_together = start_together
        self._in_flight: list[int] = [0] * len(self._engines)
        self._served: list[int] = [0] * len(self._engines)
        # request id → indices of the engines running it (a caller may reuse an id).
        self._owners: dict[str, list[int]] = {}
        self._down: dict[int, str] = {}
        self._cursor = 0

    # ---- protocol ---------------------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        """The first engine's info, with the pool's size and state in ``details``."""
        first = self._engines[0].info
        sizes = [engine.info.batch_size for engine in self._engines]
        details = dict(first.details)
        details["replicas"] = str(len(self._engines))
        details["replicas_healthy"] = str(len(self._engines) - len(self._down))
        details["replicas_served"] = ",".join(str(n) for n in self._served)
        return EngineInfo(
            name=first.name,
            model_id=first.model_id,
            version=first.version,
            modes=first.modes,
            details=details,
            batch_size=None if None in sizes else sum(s for s in sizes if s is not None),
        )

    @property
    def engines(self) -> tuple[Engine, ...]:
        """The pooled engines, in order."""
        return self._engines

    @property
    def in_flight(self) -> tuple[int, ...]:
        """Requests in flight per engine, as routed by this pool."""
        return tuple(self._in_flight)

    async def start(self) -> None:
        """Start every engine; if one fails, close them all and raise its error."""
        try:
            if self._start_together:
                results = await asyncio.gather(*(e.start() for e in self._engines), return_exceptions=True)
                for outcome in results:
                    if isinstance(outcome, BaseException):
                        raise outcome
            else:
                for engine in self._engines:
                    await engine.start()
        except BaseException:
            await self.close()
            raise
        self._down.clear()

    async def close(self) -> None:
        """Close every engine (each close is idempotent); the first failure is raised after all ran."""
        results = await asyncio.gather(*(e.close() for e in self._engines), return_exceptions=True)
        for outcome in results:
            if isinstance(outcome, Exception):
                raise outcome

    async def generate(self, request: EngineRequest) -> EngineOutput:
        """Run ``request`` on the least-loaded healthy engine."""
        with self._routed(request.request_id) as index:
            return await self._engines[index].generate(request)

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        """Stream ``request`` from the least-loaded healthy engine; closing early aborts it there."""
        with self._routed(request.request_id) as index:
            deltas = self._engines[index].stream(request)
            try:
                async for delta in deltas:
                    yield delta
            finally:
                # Close the engine's stream now, not at garbage collection: that is what aborts it.
                aclose = getattr(deltas, "aclose", None)
                if aclose is not None:
                    await aclose()

    async def abort(self, request_id: str) -> None:
        """Abort ``request_id`` on the engine(s) running it; unknown ids are ignored."""
        for index in list(self._owners.get(request_id, ())):
            await self._engines[index].abort(request_id)

    async def check_health(self) -> None:
        """Check every engine; raise ``EngineUnavailable`` only if none is healthy."""
        results = await asyncio.gather(*(e.check_health() for e in self._engines), return_exceptions=True)
        for index, outcome in enumerate(results):
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancellation and friends are not a health verdict
            if outcome is None:
                if self._down.pop(index, None) is not None:
                    logger.info("engine replica %d is healthy again", index)
            else:
                self._mark_down(index, outcome)
        if len(self._down) == len(self._engines):
            raise self._all_down()

    # ---- routing ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _routed(self, request_id: str) -> Iterator[int]:
        index = self._pick()
        self._in_flight[index] += 1
        self._owners.setdefault(request_id, []).append(index)
        try:
            yield index
            self._served[index] += 1
        except EngineUnavailable as exc:
            self._mark_down(index, exc)
            raise
        finally:
            self._in_flight[index] -= 1
            owners = self._owners[request_id]
            owners.remove(index)
            if not owners:
                del self._owners[request_id]

    def _pick(self) -> int:
        """Fewest in flight among healthy engines; ties round-robin from the cursor."""
        healthy = [i for i in range(len(self._engines)) if i not in self._down]
        if not healthy:
            raise self._all_down()
        least = min(self._in_flight[i] for i in healthy)
        tied = [i for i in healthy if self._in_flight[i] == least]
        choice = next((i for i in tied if i >= self._cursor), tied[0])
        self._cursor = (choice + 1) % len(self._engines)
        return choice

    def _mark_down(self, index: int, error: Exception) -> None:
        if index not in self._down:
            logger.warning("engine replica %d taken out of rotation: %s", index, error)
        self._down[index] = str(error)

    def _all_down(self) -> EngineUnavailable:
        reasons = "; ".join(f"replica {i}: {why}" for i, why in sorted(self._down.items()))
        return EngineUnavailable(f"no engine replica is healthy ({reasons})", retry_after=10)
