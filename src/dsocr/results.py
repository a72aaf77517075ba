"""What the pipeline produces: page results with their usage and timings, and the events of a run.

Plain data, below both the pipeline that makes them and the output formats that render them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

from dsocr.engine.base import FinishReason
from dsocr.errors import DsocrError
from dsocr.types import Block, ParsedOutput

__all__ = [
    "BlockFound",
    "PageEvent",
    "PageResult",
    "PageStarted",
    "PageTimings",
    "TextDelta",
    "Usage",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Token counts. ``vision_tokens`` is the part of ``prompt_tokens`` that the image took."""

    prompt_tokens: int = 0
    vision_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            vision_tokens=self.vision_tokens + other.vision_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PageTimings:
    """Seconds spent on one page. Engine figures are ``None`` where the engine cannot tell."""

    load_s: float = 0.0  # decode / rasterise (documents only; 0 for an image passed in)
    queue_s: float | None = None  # waiting in the engine before the first step
    first_token_s: float | None = None
    engine_s: float = 0.0  # the engine call as seen by the pipeline, cache lookup included
    post_s: float = 0.0  # parse + crops + visualization
    total_s: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PageResult:
    """The outcome of one page. Exactly one of ``parsed`` and ``error`` is set.

    ``page`` is 1-based (1 for a single image). ``drawn`` holds what the request's output formats
    computed from the page image (figure crops, the visualization …), by format name. ``cached``:
    ``True`` when the engine's output came from the result cache (:mod:`dsocr.cache`), ``False``
    when the cache was looked up and missed, ``None`` when the request did not use it.
    """

    page: int
    request_id: str
    parsed: ParsedOutput | None = None
    error: DsocrError | None = None
    image_size: tuple[int, int] | None = None
    usage: Usage = field(default_factory=Usage)
    finish_reason: FinishReason | None = None
    repetition_score: float | None = None
    repetitive: bool = False
    warnings: tuple[str, ...] = ()
    timings: PageTimings = field(default_factory=PageTimings)
    drawn: dict[str, Any] = field(default_factory=dict)
    cached: bool | None = None

    @property
    def ok(self) -> bool:
        """True when the page produced output."""
        return self.error is None


@dataclass(frozen=True, slots=True, kw_only=True)
class PageStarted:
    """Event: results for ``page`` follow (its deltas or blocks, then its :class:`PageResult`)."""

    page: int
    request_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TextDelta:
    """Event (``stream="text"``): text the engine generated for ``page`` since the last delta."""

    page: int
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockFound:
    """Event (``stream="blocks"``): a grounded block of ``page`` is complete in the output so far.

    Streamed blocks are previews; the authoritative list is the page's final ``parsed.blocks``.
    """

    page: int
    block: Block


PageEvent: TypeAlias = PageStarted | TextDelta | BlockFound | PageResult
