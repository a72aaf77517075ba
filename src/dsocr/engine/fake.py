"""A scripted, deterministic engine for tests, docs and demos (``DSOCR_ENGINE__KIND=fake``).

It answers every prompt preset in the shape DeepSeek-OCR uses (§5.1): the document prompt gets a
page with a title, a sub-title, paragraphs, an equation, an HTML table, an image and its caption;
``OCR this image`` one ``<|ref|>line<|/ref|>`` tag per line; ``Locate`` one tag; the others plain
text. Boxes depend deterministically on the image size and the prompt, so two identical requests
give identical output and a different page size moves the boxes.

Tokens are counted as whitespace-separated pieces of the output. When ``max_tokens`` pieces are
reached the output is cut there and ends with ``finish_reason="length"``.

Behaviour on demand, through constructor options or — so that tests through HTTP can trigger them —
markers anywhere in the prompt (only this engine honours them; they are removed before the prompt
is matched to a preset):

* ``[fake:fail]`` raises ``EngineError``; ``[fake:fail=unavailable|overloaded|timeout|invalid]``
  raises ``EngineUnavailable``, ``EngineOverloaded``, ``EngineTimeout`` or ``InvalidInput``.
* ``[fake:loop]`` produces a repetition loop that runs until ``max_tokens`` (``"length"``).
* ``[fake:slow=0.5]`` spreads 0.5 s of delay over the streamed deltas (like ``delay_s``).

The fake is chosen only explicitly; the factory never falls back to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import zlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TypeVar

from dsocr.engine.accounting import prompt_tokens, request_profile, vision_tokens
from dsocr.engine.base import (
    EngineDelta,
    EngineInfo,
    EngineOutput,
    EngineRequest,
    FinishReason,
    SamplingOptions,
)
from dsocr.engine.layout import det_tag
from dsocr.errors import (
    DsocrError,
    EngineError,
    EngineOverloaded,
    EngineTimeout,
    EngineUnavailable,
    InvalidInput,
)
from dsocr.modes import V1, ModelProfile
from dsocr.prompts import is_grounded, locate_target, preset_of
from dsocr.types import Box

__all__ = ["FAKE_MARKER_RE", "FakeEngine", "SeenRequest"]

FAKE_MARKER_RE = re.compile(r"\[fake:(?P<name>fail|loop|slow)(?:=(?P<value>[^\]]*))?\]")
_T = TypeVar("_T")
# Image size assumed for a request without an image.
DEFAULT_SIZE = (1000, 1000)

_FAILURES: dict[str, Callable[[str], DsocrError]] = {
    "": lambda msg: EngineError(msg),
    "engine": lambda msg: EngineError(msg),
    "unavailable": lambda msg: EngineUnavailable(msg, retry_after=1.0),
    "overloaded": lambda msg: EngineOverloaded(msg, retry_after=1.0),
    "timeout": lambda msg: EngineTimeout(msg),
    "invalid": lambda msg: InvalidInput(msg, field="prompt"),
}


@dataclass(frozen=True, slots=True)
class _Item:
    """One element of the scripted page: label, grid box (fractions of the page) and content."""

    label: str
    frac: tuple[float, float, float, float]
    content: str
    lines: tuple[str, ...]


_PAGE: tuple[_Item, ...] = (
    _Item(
        "title", (0.10, 0.05, 0.90, 0.09), "# A Fake Document for Testing", ("A Fake Document for Testing",)
    ),
    _Item("sub_title", (0.10, 0.11, 0.50, 0.14), "## 1. Introduction", ("1. Introduction",)),
    _Item(
        "text",
        (0.10, 0.15, 0.90, 0.25),
        "This page was produced by the fake engine. Its layout is fixed and its boxes depend only on "
        "the image size and the prompt.",
        (
            "This page was produced by the fake engine. Its layout is fixed",
            "and its boxes depend only on the image size and the prompt.",
        ),
    ),
    _Item("equation", (0.30, 0.27, 0.70, 0.31), "\\[ E = m c^{2} \\]", ("E = mc2",)),
    _Item(
        "table",
        (0.10, 0.33, 0.90, 0.50),
        "<table><tr><td>Item</td><td>Quantity</td></tr><tr><td>Apples</td><td>3</td></tr>"
        "<tr><td>Pears</td><td>5</td></tr></table>",
        ("Item Quantity", "Apples 3", "Pears 5"),
    ),
    _Item("image", (0.20, 0.53, 0.80, 0.80), "", ()),
    _Item(
        "image_caption",
        (0.25, 0.81, 0.75, 0.84),
        "<center>Figure 1: A fake figure.</center>",
        ("Figure 1: A fake figure.",),
    ),
    _Item(
        "text",
        (0.10, 0.86, 0.90, 0.94),
        "The end of the fake page. Nothing here was read from the image.",
        ("The end of the fake page. Nothing here was read from the image.",),
    ),
)
_LOOP_LINE = "the model repeats this line again and again\n"


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """What the fake engine remembers of a request: all of it but the image, of which only the size."""

    request_id: str
    prompt: str
    image_size: tuple[int, int] | None
    sampling: SamplingOptions
    mode: str
    model: str | None

    @classmethod
    def of(cls, request: EngineRequest) -> SeenRequest:
        size = request.image.size if request.image is not None else None
        return cls(request.request_id, request.prompt, size, request.sampling, request.mode, request.model)


class FakeEngine:
    """Deterministic scripted engine implementing the ``Engine`` protocol.

    ``delay_s`` is spread over the streamed deltas, so an abort lands mid-way; ``fail`` is raised by
    every request; ``loop`` makes every request a repetition loop. For tests to assert on,
    ``requests`` keeps the last ``history_size`` requests seen, without their images (a long-running
    demo server would otherwise hold every one forever), ``request_count`` counts all of them and
    ``aborted`` keeps the ids of the last ``history_size`` aborted requests. ``profile`` is the
    default model's (``DSOCR_ENGINE__MODEL``): usage counts a request's vision tokens by its model's
    profile, that one for a request that names no model.
    """

    def __init__(
        self,
        *,
        delay_s: float = 0.0,
        fail: DsocrError | None = None,
        loop: bool = False,
        start_error: DsocrError | None = None,
        model_id: str = "fake-deepseek-ocr",
        history_size: int = 64,
        max_batch: int | None = None,
        profile: ModelProfile = V1,
    ) -> None:
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        if history_size < 1:
            raise ValueError(f"history_size must be >= 1, got {history_size}")
        self._delay_s = delay_s
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        # Like a real engine's batch: more requests than this wait their turn, first come first served.
        self._batch = asyncio.Semaphore(max_batch) if max_batch is not None else None
        self._max_batch = max_batch
        self._fail = fail
        self._loop = loop
        self._start_error = start_error
        self._model_id = model_id
        self._profile = profile
        self._started = False
        self._active: set[str] = set()
        self._abort_requested: set[str] = set()
        self._history_size = history_size
        # Lists, not deques, so that tests compare them with list literals; trimmed on append.
        self.aborted: list[str] = []
        self.requests: list[SeenRequest] = []
        self.request_count = 0

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            name="fake",
            model_id=self._model_id,
            version="1",
            modes=("tiny", "small", "base", "large", "gundam"),
            batch_size=self._max_batch,
            details={
                "note": "scripted output for tests; nothing is read from the image",
                "completion_tokens": "whitespace-separated pieces of the output",
                "markers": "[fake:fail], [fake:fail=KIND], [fake:loop], [fake:slow=SECONDS]",
            },
        )

    async def start(self) -> None:
        """Become ready, or raise the configured ``start_error``."""
        if self._start_error is not None:
            raise self._start_error
        self._started = True

    async def close(self) -> None:
        """Stop serving; idempotent."""
        self._started = False

    async def check_health(self) -> None:
        """Raise ``EngineUnavailable`` unless started."""
        if not self._started:
            raise EngineUnavailable("the fake engine is not started")

    async def abort(self, request_id: str) -> None:
        """Abort a running request; it ends with ``finish_reason="abort"``. Unknown ids are ignored."""
        if request_id in self._active:
            self._abort_requested.add(request_id)

    async def generate(self, request: EngineRequest) -> EngineOutput:
        """Run one request to completion (see ``stream``)."""
        # Closed here, not whenever the event loop finalises it: until then it holds the request.
        async with contextlib.aclosing(self.stream(request)) as stream:
            async for delta in stream:
                if delta.output is not None:
                    return delta.output
        raise EngineError("the fake engine ended a stream without a final output")  # pragma: no cover

    async def stream(self, request: EngineRequest) -> AsyncGenerator[EngineDelta, None]:
        """Yield one delta per block, then a final delta carrying the ``EngineOutput``."""
        await self.check_health()
        self.request_count += 1
        self._remember(self.requests, SeenRequest.of(request))
        started = time.monotonic()
        markers = {m.group("name"): m.group("value") or "" for m in FAKE_MARKER_RE.finditer(request.prompt)}
        prompt = FAKE_MARKER_RE.sub("", request.prompt)
        if "fail" in markers:
            kind = markers["fail"]
            if kind not in _FAILURES:
                raise InvalidInput(
                    f"unknown [fake:fail=...] kind {kind!r}; known: {', '.join(sorted(_FAILURES))}",
                    field="prompt",
                )
            raise _FAILURES[kind]("fake failure requested by a [fake:fail] marker")
        if self._fail is not None:
            raise self._fail
        delay = self._delay_s
        if "slow" in markers:
            try:
                delay = float(markers["slow"])
            except ValueError:
                raise InvalidInput(
                    f"[fake:slow=...] needs seconds, got {markers['slow']!r}", field="prompt"
                ) from None
        size = request.image.size if request.image is not None else DEFAULT_SIZE
        vision = vision_tokens(size[0], size[1], request.mode, request_profile(request.model, self._profile))
        looping = self._loop or "loop" in markers
        pieces = self._pieces(prompt, size, looping, request.sampling.max_tokens)

        budget = request.sampling.max_tokens
        emitted: list[str] = []
        finish: FinishReason = "stop"
        first_token_s: float | None = None
        queue_s: float | None = None
        step = delay / max(len(pieces), 1)
        self._active.add(request.request_id)
        try:
            if self._batch is not None:
                await self._batch.acquire()
            queue_s = time.monotonic() - started
            for piece in pieces:
                if step:
                    await asyncio.sleep(step)
                if request.request_id in self._abort_requested:
                    finish = "abort"
                    break
                text, budget, cut = _take_tokens(piece, budget)
                if text:
                    if first_token_s is None:
                        first_token_s = time.monotonic() - started
                    emitted.append(text)
                    yield EngineDelta(request_id=request.request_id, text=text)
                if cut:
                    finish = "length"
                    break
        except (GeneratorExit, asyncio.CancelledError):
            # The consumer closed the stream or was cancelled: that is an abort too.
            self._remember(self.aborted, request.request_id)
            raise
        finally:
            if self._batch is not None and queue_s is not None:
                self._batch.release()
            self._active.discard(request.request_id)
            self._abort_requested.discard(request.request_id)
        if finish == "abort":
            self._remember(self.aborted, request.request_id)
        full = "".join(emitted)
        output = EngineOutput(
            request_id=request.request_id,
            text=full,
            finish_reason=finish,
            prompt_tokens=prompt_tokens(prompt, vision),
            vision_tokens=vision,
            completion_tokens=len(full.split()),
            queue_s=queue_s,
            first_token_s=first_token_s,
            total_s=time.monotonic() - started,
        )
        yield EngineDelta(request_id=request.request_id, text="", finish_reason=finish, output=output)

    def _remember(self, history: list[_T], item: _T) -> None:
        history.append(item)
        del history[: -self._history_size]

    def _pieces(self, prompt: str, size: tuple[int, int], looping: bool, max_tokens: int) -> list[str]:
        seed = zlib.crc32(f"{prompt}|{size[0]}x{size[1]}".encode())
        preset = preset_of(prompt)
        if looping:
            head = _document(seed, size)[:1]
            repeats = max_tokens // max(len(_LOOP_LINE.split()), 1) + 1
            return head + [_LOOP_LINE] * repeats
        if preset == "document":
            return _document(seed, size)
        if preset == "ocr" or (preset is None and is_grounded(prompt)):
            return _ocr_lines(seed, size)
        if preset == "locate":
            target = locate_target(prompt) or ""
            return [det_tag(target, [_box(seed, 99, (0.10, 0.15, 0.90, 0.25))])]
        if preset == "figure":
            return [
                "<table><tr><td>Year</td><td>Value</td></tr><tr><td>2024</td><td>10</td></tr>"
                "<tr><td>2025</td><td>12</td></tr></table>"
            ]
        if preset == "describe":
            return [
                f"The image is a document page of {size[0]} by {size[1]} pixels. ",
                "It has a title, a short introduction, an equation, a table and a figure with a caption.",
            ]
        plain = [" ".join(item.lines) for item in _PAGE if item.lines]
        return [text + ("\n\n" if i < len(plain) - 1 else "") for i, text in enumerate(plain)]


def _box(seed: int, index: int, frac: tuple[float, float, float, float]) -> Box:
    # Up to ±7 grid units of jitter per corner, derived from the seed: deterministic per request.
    def jitter(k: int) -> int:
        return (zlib.crc32(f"{seed}:{index}:{k}".encode()) % 15) - 7

    x1, y1, x2, y2 = (round(f * 999) + jitter(k) for k, f in enumerate(frac))
    return (_clamp(x1), _clamp(y1), _clamp(max(x2, x1 + 1)), _clamp(max(y2, y1 + 1)))


def _clamp(value: int) -> int:
    return min(999, max(0, value))


def _document(seed: int, size: tuple[int, int]) -> list[str]:
    del size  # the seed already encodes the size
    pieces = []
    for index, item in enumerate(_PAGE):
        tag = det_tag(item.label, [_box(seed, index, item.frac)])
        pieces.append(f"{tag}\n{item.content}\n\n" if item.content else f"{tag}\n\n")
    return pieces


def _ocr_lines(seed: int, size: tuple[int, int]) -> list[str]:
    del size
    pieces = []
    for index, item in enumerate(_PAGE):
        x1, y1, x2, y2 = item.frac
        count = len(item.lines)
        for k, line in enumerate(item.lines):
            top = y1 + (y2 - y1) * k / count
            frac = (x1, top, x2, top + (y2 - y1) / count)
            pieces.append(f"{det_tag(line, [_box(seed, index * 10 + k, frac)])}\n")
    return pieces


def _take_tokens(piece: str, budget: int) -> tuple[str, int, bool]:
    """Take at most ``budget`` whitespace-separated tokens of ``piece``; say whether it was cut."""
    matches = list(re.finditer(r"\S+", piece))
    if len(matches) <= budget:
        return piece, budget - len(matches), False
    if budget <= 0:
        return "", 0, True
    return piece[: matches[budget - 1].end()], 0, True
