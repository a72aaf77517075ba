"""EnginePool: requests go to the engine with the shortest queue, aborts to the owner, health is "any"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from dsocr.engine.base import Engine, EngineDelta, EngineInfo, EngineOutput, EngineRequest, SamplingOptions
from dsocr.engine.fake import FakeEngine
from dsocr.engine.pool import EnginePool
from dsocr.errors import EngineUnavailable


class GatedEngine:
    """A protocol engine whose requests finish only when the test opens their gate.

    It records what it ran and what it was asked to abort, and can be made unhealthy, so the
    pool's routing decisions are observable without any timing.
    """

    def __init__(self, name: str, *, service_s: float = 0.0, gated: bool = True) -> None:
        self.name = name
        self.service_s = service_s
        self.gated = gated
        self.gates: dict[str, asyncio.Event] = {}
        self.ran: list[str] = []
        self.aborted: list[str] = []
        self.closed_streams: list[str] = []
        self.healthy = True
        self.started = False
        self.closed = False

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(name="gated", model_id="m", version="0", details={"engine": self.name})

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def check_health(self) -> None:
        if not self.healthy:
            raise EngineUnavailable(f"{self.name} is down")

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        gate = self.gates.get(request_id)
        if gate is not None:
            gate.set()

    async def _wait(self, request_id: str) -> None:
        if not self.healthy:
            raise EngineUnavailable(f"{self.name} is down")
        self.ran.append(request_id)
        if self.gated:
            gate = self.gates.setdefault(request_id, asyncio.Event())
            await gate.wait()
        else:
            await asyncio.sleep(self.service_s)

    def release(self, request_id: str) -> None:
        self.gates.setdefault(request_id, asyncio.Event()).set()

    async def generate(self, request: EngineRequest) -> EngineOutput:
        await self._wait(request.request_id)
        return EngineOutput(
            request_id=request.request_id,
            text=f"{self.name}:{request.request_id}",
            finish_reason="stop",
            prompt_tokens=1,
            vision_tokens=0,
            completion_tokens=1,
        )

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        try:
            yield EngineDelta(request_id=request.request_id, text=f"{self.name}:")
            await self._wait(request.request_id)
            output = await self.generate(request) if not self.gated else None
            yield EngineDelta(request_id=request.request_id, text="done", finish_reason="stop", output=output)
        finally:
            self.closed_streams.append(request.request_id)


def req(request_id: str) -> EngineRequest:
    return EngineRequest(
        request_id=request_id, prompt="<image>\nFree OCR.", image=Image.new("RGB", (64, 64), "white")
    )


async def settle() -> None:
    """Let every started task reach its first await."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_pool_implements_the_engine_protocol() -> None:
    assert isinstance(EnginePool([GatedEngine("a")]), Engine)


def test_an_empty_pool_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one engine"):
        EnginePool([])


async def test_an_idle_pool_spreads_a_burst_round_robin() -> None:
    engines = [GatedEngine("a"), GatedEngine("b"), GatedEngine("c")]
    pool = EnginePool(engines)
    tasks = [asyncio.create_task(pool.generate(req(f"r{i}"))) for i in range(6)]
    await settle()
    assert [e.ran for e in engines] == [["r0", "r3"], ["r1", "r4"], ["r2", "r5"]]
    assert pool.in_flight == (2, 2, 2)
    for e in engines:
        for rid in list(e.ran):
            e.release(rid)
    outputs = await asyncio.gather(*tasks)
    assert [o.text for o in outputs] == ["a:r0", "b:r1", "c:r2", "a:r3", "b:r4", "c:r5"]
    assert pool.in_flight == (0, 0, 0)


async def test_new_requests_go_to_the_engine_with_the_shortest_queue() -> None:
    a, b = GatedEngine("a"), GatedEngine("b")
    pool = EnginePool([a, b])
    first = [asyncio.create_task(pool.generate(req(f"r{i}"))) for i in range(4)]
    await settle()
    assert (a.ran, b.ran) == (["r0", "r2"], ["r1", "r3"])
    # a finishes its two; b is still busy with two: the next two both belong to a.
    a.release("r0")
    a.release("r2")
    await asyncio.gather(first[0], first[2])
    second = [asyncio.create_task(pool.generate(req(f"s{i}"))) for i in range(3)]
    await settle()
    assert a.ran == ["r0", "r2", "s0", "s1"]
    assert b.ran == ["r1", "r3", "s2"]  # queues were equal (2, 2) again, the tie broke to b
    for e in (a, b):
        for rid in e.ran:
            e.release(rid)
    await asyncio.gather(*first, *second)


async def test_a_faster_engine_serves_more_of_a_steady_load() -> None:
    # Closed loop: 8 clients, each sending its next page when the last one returns. The slow
    # engine's queue stays longer, so it is picked less; no timing is asserted, only the split.
    fast = GatedEngine("fast", service_s=0.002, gated=False)
    slow = GatedEngine("slow", service_s=0.040, gated=False)
    pool = EnginePool([fast, slow])
    counter = iter(range(10_000))

    async def client() -> None:
        for _ in range(20):
            await pool.generate(req(f"r{next(counter)}"))

    await asyncio.gather(*(client() for _ in range(8)))
    assert len(fast.ran) + len(slow.ran) == 160
    assert len(fast.ran) > 3 * len(slow.ran)
    assert pool.info.details["replicas_served"] == f"{len(fast.ran)},{len(slow.ran)}"


async def test_abort_goes_to_the_engine_running_the_request() -> None:
    a, b = GatedEngine("a"), GatedEngine("b")
    pool = EnginePool([a, b])
    tasks = [asyncio.create_task(pool.generate(req(rid))) for rid in ("x", "y")]
    await settle()
    await pool.abort("y")
    assert (a.aborted, b.aborted) == ([], ["y"])
    await pool.abort("unknown")  # ignored
    assert (a.aborted, b.aborted) == ([], ["y"])
    a.release("x")
    await asyncio.gather(*tasks)
    await pool.abort("x")  # finished: no longer owned by anyone
    assert a.aborted == []


async def test_cancelling_a_request_frees_its_slot() -> None:
    a, b = GatedEngine("a"), GatedEngine("b")
    pool = EnginePool([a, b])
    task = asyncio.create_task(pool.generate(req("gone")))
    await settle()
    assert pool.in_flight == (1, 0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.in_flight == (0, 0)


async def test_a_stream_comes_from_one_engine_and_closing_it_closes_the_engine_stream() -> None:
    a, b = GatedEngine("a"), GatedEngine("b")
    pool = EnginePool([a, b])
    busy = asyncio.create_task(pool.generate(req("busy")))  # a has one in flight
    await settle()
    stream = pool.stream(req("s"))
    first = await anext(stream)
    assert first.text == "b:"  # b had the shorter queue
    assert pool.in_flight == (1, 1)
    await pool.abort("s")
    assert b.aborted == ["s"]
    await stream.aclose()
    assert b.closed_streams == ["s"]
    assert pool.in_flight == (1, 0)
    a.release("busy")
    await busy


async def test_a_stream_runs_to_its_final_delta() -> None:
    engine = FakeEngine()
    pool = EnginePool([engine, FakeEngine()])
    await pool.start()
    request = EngineRequest(
        request_id="doc",
        prompt="<image>\n<|grounding|>Convert the document to markdown.",
        image=Image.new("RGB", (800, 1000), "white"),
        sampling=SamplingOptions(max_tokens=4096),
    )
    deltas = [d async for d in pool.stream(request)]
    streamed = "".join(d.text for d in deltas)
    assert deltas[-1].finish_reason == "stop" and deltas[-1].output is not None
    # Same text as the engine gives for the same request directly: the pool adds nothing.
    assert streamed == (await engine.generate(request)).text
    await pool.close()


async def test_health_is_any_and_a_down_engine_leaves_the_rotation() -> None:
    a, b = GatedEngine("a"), GatedEngine("b")
    pool = EnginePool([a, b])
    await pool.start()
    b.healthy = False
    await pool.check_health()  # a still serves: no error
    assert pool.info.details["replicas_healthy"] == "1"
    tasks = [asyncio.create_task(pool.generate(req(f"r{i}"))) for i in range(3)]
    await settle()
    assert (a.ran, b.ran) == (["r0", "r1", "r2"], [])
    for rid in a.ran:
        a.release(rid)
    await asyncio.gather(*tasks)
    a.healthy = False
    with pytest.raises(EngineUnavailable, match="no engine replica is healthy") as caught:
        await pool.check_health()
    assert "a is down" in caught.value.message and "b is down" in caught.value.message
    with pytest.raises(EngineUnavailable):
        await pool.generate(req("refused"))
    # Back up: the next health check puts both into rotation again.
    a.healthy = b.healthy = True
    await pool.check_health()
    assert pool.info.details["replicas_healthy"] == "2"


async def test_an_engine_failing_a_request_with_unavailable_leaves_the_rotation() -> None:
    a, b = GatedEngine("a"), GatedEngine("b")
    pool = EnginePool([a, b])
    a.healthy = False  # not yet noticed by a health check
    with pytest.raises(EngineUnavailable, match="a is down"):
        await pool.generate(req("r0"))
    task = asyncio.create_task(pool.generate(req("r1")))
    await settle()
    assert b.ran == ["r1"]
    b.release("r1")
    await task


async def test_start_failure_closes_every_engine_and_raises() -> None:
    class Broken(GatedEngine):
        async def start(self) -> None:
            raise EngineUnavailable("no weights")

    ok, broken = GatedEngine("ok"), Broken("broken")
    pool = EnginePool([ok, broken], start_together=False)
    with pytest.raises(EngineUnavailable, match="no weights"):
        await pool.start()
    assert ok.started and ok.closed and broken.closed


async def test_info_names_the_pool_size() -> None:
    pool = EnginePool([GatedEngine("a"), GatedEngine("b")])
    info = pool.info
    assert (info.name, info.model_id, info.details["replicas"], info.details["engine"]) == (
        "gated",
        "m",
        "2",
        "a",
    )
