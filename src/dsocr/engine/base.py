"""The engine protocol: prompt + one image in, text out. No HTTP, no parsing, no rendering.

Every engine (vLLM on GPU, the embedded CPU engine, the fake) implements ``Engine``
structurally. Batching belongs inside the engine: callers send one request per page,
concurrently, and the engine batches them continuously.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from PIL import Image

__all__ = [
    "TD_CLOSE_ID",
    "TD_OPEN_ID",
    "Engine",
    "EngineDelta",
    "EngineInfo",
    "EngineOutput",
    "EngineRequest",
    "FinishReason",
    "SamplingOptions",
]

# Token ids of `<td>` and `</td>` in the DeepSeek-OCR tokenizer: the official n-gram whitelist.
TD_OPEN_ID = 128821
TD_CLOSE_ID = 128822

FinishReason = Literal["stop", "length", "abort", "repetition"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingOptions:
    """Generation settings. The defaults are the OCR-safe ones of the official scripts."""

    max_tokens: int = 8192
    temperature: float = 0.0
    top_p: float = 1.0
    # No-repeat n-gram rule (§4.1); ``ngram_size=None`` turns it off.
    ngram_size: int | None = 30
    ngram_window: int = 90
    whitelist_token_ids: frozenset[int] = frozenset({TD_OPEN_ID, TD_CLOSE_ID})
    seed: int | None = None
    ignore_eos: bool = False  # the engine's self-test and benchmarks: force the output length


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineRequest:
    """One image and its prompt. ``prompt`` is the full prompt including ``<image>``."""

    request_id: str
    prompt: str
    image: Image.Image | None
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    # Resolution mode name (``gundam`` etc., see dsocr.modes); engines that cannot honour it raise.
    mode: str = "gundam"
    model: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOutput:
    """The full result of one request."""

    request_id: str
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    vision_tokens: int
    completion_tokens: int
    # Seconds: queued → first token → done. ``None`` where an engine cannot tell.
    queue_s: float | None = None
    first_token_s: float | None = None
    total_s: float = 0.0
    # 0..1, share of the output covered by repeated n-grams (see dsocr.ngram.repetition_score).
    repetition_score: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineDelta:
    """A streamed piece of text. The last delta has ``finish_reason`` set and ``output`` filled."""

    request_id: str
    text: str
    finish_reason: FinishReason | None = None
    output: EngineOutput | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineInfo:
    """What ``/health`` and ``/v1/models`` say about an engine."""

    name: str  # "vllm", "cpu", "fake"
    model_id: str
    version: str
    modes: tuple[str, ...] = ("gundam",)
    details: dict[str, str] = field(default_factory=dict)
    # Pages the engine generates at once (its batch); more wait their turn. None: not fixed.
    batch_size: int | None = None


@runtime_checkable
class Engine(Protocol):
    """What every engine implements. Entered once (lifespan, Truss ``load()``, a Ray actor)."""

    @property
    def info(self) -> EngineInfo: ...

    async def start(self) -> None:
        """Load weights, warm up, run self-tests. Raises ``EngineUnavailable`` on failure."""

    async def close(self) -> None:
        """Release everything; idempotent."""

    async def generate(self, request: EngineRequest) -> EngineOutput:
        """Run one request to completion. Cancelling the awaiting task aborts it in the engine."""

    def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        """Yield text deltas; closing the iterator early aborts the request in the engine."""

    async def abort(self, request_id: str) -> None:
        """Abort a running request; unknown ids are ignored."""

    async def check_health(self) -> None:
        """Raise ``EngineUnavailable`` when the engine cannot serve."""
