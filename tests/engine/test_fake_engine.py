"""The fake engine: deterministic, every preset in the real model's shape, failures and aborts on demand."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref

import pytest
from PIL import Image

from dsocr.engine.base import EngineRequest, SamplingOptions
from dsocr.engine.fake import FakeEngine
from dsocr.errors import EngineError, EngineOverloaded, EngineUnavailable, InvalidInput
from dsocr.grounding import parse
from dsocr.prompts import PRESETS, build_prompt


def _request(
    prompt: str, *, size: tuple[int, int] = (800, 1100), rid: str = "r1", max_tokens: int = 8192
) -> EngineRequest:
    return EngineRequest(
        request_id=rid,
        prompt=prompt,
        image=Image.new("RGB", size, "white"),
        sampling=SamplingOptions(max_tokens=max_tokens),
    )


@pytest.fixture
async def fake() -> FakeEngine:
    engine = FakeEngine()
    await engine.start()
    return engine


async def test_same_request_gives_identical_output_and_another_size_moves_boxes(fake: FakeEngine) -> None:
    first = await fake.generate(_request(PRESETS["document"]))
    again = await fake.generate(_request(PRESETS["document"]))
    other = await fake.generate(_request(PRESETS["document"], size=(1600, 900)))
    assert first.text == again.text
    boxes = parse(first.text, width=800, height=1100, prompt=PRESETS["document"]).blocks
    other_boxes = parse(other.text, width=1600, height=900, prompt=PRESETS["document"]).blocks
    assert [b.label for b in boxes] == [b.label for b in other_boxes]
    assert [b.boxes for b in boxes] != [b.boxes for b in other_boxes]


async def test_document_prompt_parses_into_every_layout_kind(fake: FakeEngine) -> None:
    out = await fake.generate(_request(PRESETS["document"]))
    parsed = parse(out.text, width=800, height=1100, prompt=PRESETS["document"])
    assert not parsed.warnings
    labels = [b.label for b in parsed.blocks]
    for label in ("title", "sub_title", "text", "equation", "table", "image", "image_caption"):
        assert label in labels
    assert parsed.markdown.startswith("# A Fake Document for Testing")
    assert "<table>" in parsed.markdown
    assert len(parsed.crop_boxes_px) == 1
    assert all(0 <= v <= 999 for b in parsed.blocks for box in b.boxes for v in box)


async def test_ocr_prompt_gives_one_block_per_line_with_the_text_as_label(fake: FakeEngine) -> None:
    out = await fake.generate(_request(PRESETS["ocr"]))
    parsed = parse(out.text, width=800, height=1100, prompt=PRESETS["ocr"])
    assert len(parsed.blocks) > 5
    assert all(b.label == b.text and len(b.boxes) == 1 for b in parsed.blocks)
    assert parsed.blocks[0].text == "A Fake Document for Testing"


async def test_locate_prompt_returns_the_target_with_a_box(fake: FakeEngine) -> None:
    prompt = build_prompt("locate", target="the introduction")
    parsed = parse((await fake.generate(_request(prompt))).text, width=800, height=1100, prompt=prompt)
    assert [b.label for b in parsed.blocks] == ["the introduction"]
    assert len(parsed.blocks[0].boxes) == 1


@pytest.mark.parametrize("preset", ["free", "figure", "describe"])
async def test_ungrounded_presets_answer_without_tags(fake: FakeEngine, preset: str) -> None:
    out = await fake.generate(_request(PRESETS[preset]))
    assert out.text and "<|ref|>" not in out.text and "<|det|>" not in out.text
    assert out.finish_reason == "stop"


async def test_max_tokens_cuts_output_and_reports_length(fake: FakeEngine) -> None:
    out = await fake.generate(_request(PRESETS["free"], max_tokens=7))
    assert out.finish_reason == "length"
    assert out.completion_tokens == 7 == len(out.text.split())


async def test_usage_counts_deepseek_vision_tokens(fake: FakeEngine) -> None:
    out = await fake.generate(_request(PRESETS["free"], size=(1224, 1584)))
    assert out.vision_tokens == 903  # US Letter at 144 DPI in Gundam mode (reference §2.2)
    assert out.prompt_tokens > out.vision_tokens


async def test_stream_yields_several_deltas_that_add_up_to_the_output(fake: FakeEngine) -> None:
    deltas = [d async for d in fake.stream(_request(PRESETS["document"]))]
    text_deltas, final = deltas[:-1], deltas[-1]
    assert len(text_deltas) >= 5
    assert final.output is not None and final.finish_reason == "stop"
    assert "".join(d.text for d in text_deltas) == final.output.text


async def test_loop_marker_repeats_until_max_tokens(fake: FakeEngine) -> None:
    out = await fake.generate(_request("[fake:loop] Free OCR.", max_tokens=200))
    assert out.finish_reason == "length"
    assert out.completion_tokens == 200
    assert out.text.count("again and again") > 10


@pytest.mark.parametrize(
    ("marker", "error"),
    [
        ("[fake:fail]", EngineError),
        ("[fake:fail=overloaded]", EngineOverloaded),
        ("[fake:fail=unavailable]", EngineUnavailable),
        ("[fake:fail=bogus]", InvalidInput),
    ],
)
async def test_fail_markers_raise_typed_errors(fake: FakeEngine, marker: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        await fake.generate(_request(f"{marker} Free OCR."))


async def test_constructor_failure_and_loop_options() -> None:
    failing = FakeEngine(fail=EngineOverloaded("busy", retry_after=2))
    await failing.start()
    with pytest.raises(EngineOverloaded):
        await failing.generate(_request(PRESETS["free"]))
    looping = FakeEngine(loop=True)
    await looping.start()
    assert (await looping.generate(_request(PRESETS["free"], max_tokens=50))).finish_reason == "length"


async def test_abort_mid_way_ends_with_abort_and_is_recorded() -> None:
    engine = FakeEngine(delay_s=2.0)
    await engine.start()
    task = asyncio.create_task(engine.generate(_request(PRESETS["document"], rid="slow-1")))
    await asyncio.sleep(0.4)
    await engine.abort("slow-1")
    out = await task
    assert out.finish_reason == "abort"
    assert engine.aborted == ["slow-1"]
    complete = FakeEngine()
    await complete.start()
    full = await complete.generate(_request(PRESETS["document"], rid="full"))
    # Some blocks were produced before the abort, not all of them.
    assert 0 < len(out.text) < len(full.text)
    assert full.text.startswith(out.text)


async def test_slow_marker_delays_and_closing_the_stream_counts_as_abort() -> None:
    engine = FakeEngine()
    await engine.start()
    stream = engine.stream(_request("[fake:slow=1.0] Free OCR.", rid="closed"))
    first = await anext(stream)
    assert first.text
    await stream.aclose()  # type: ignore[attr-defined]
    # The stream was closed after the first of several deltas: the request counts as aborted.
    assert engine.aborted == ["closed"]


async def test_engine_not_started_is_unavailable_and_start_error_is_raised() -> None:
    engine = FakeEngine()
    with pytest.raises(EngineUnavailable):
        await engine.check_health()
    with pytest.raises(EngineUnavailable):
        await engine.generate(_request(PRESETS["free"]))
    broken = FakeEngine(start_error=EngineUnavailable("no weights"))
    with pytest.raises(EngineUnavailable, match="no weights"):
        await broken.start()


async def test_history_keeps_only_the_latest_requests_and_no_images() -> None:
    # A long-running fake server (demos, soak tests) must not grow with every request it served.
    engine = FakeEngine(history_size=8)
    await engine.start()
    images = [Image.new("RGB", (64 + i, 48), "white") for i in range(200)]
    alive = [weakref.ref(image) for image in images]
    for i, image in enumerate(images):
        request = EngineRequest(
            request_id=f"r{i}", prompt="[fake:fail]" if i % 50 == 0 else PRESETS["free"], image=image
        )
        with contextlib.suppress(EngineError):
            await engine.generate(request)
        if i % 3 == 0:
            stream = engine.stream(EngineRequest(request_id=f"closed{i}", prompt=PRESETS["free"], image=None))
            await anext(stream)
            await stream.aclose()
    del images, image, request
    gc.collect()
    assert engine.request_count == 200 + 67
    assert [r.request_id for r in engine.requests][-3:] == ["r198", "closed198", "r199"]
    assert len(engine.requests) == 8 and len(engine.aborted) == 8
    assert engine.requests[-1].image_size == (64 + 199, 48)
    assert engine.requests[-1].prompt == PRESETS["free"]
    assert [a.startswith("closed") for a in engine.aborted] == [True] * 8
    # Not one of the images is kept alive by the engine.
    assert [ref() for ref in alive] == [None] * 200


async def test_default_history_is_bounded() -> None:
    engine = FakeEngine()
    await engine.start()
    for i in range(1000):
        await engine.generate(_request(PRESETS["free"], size=(32, 32), rid=f"r{i}", max_tokens=5))
    assert engine.request_count == 1000
    assert 0 < len(engine.requests) <= 100
    assert engine.requests[-1].request_id == "r999"


async def test_max_batch_makes_requests_past_the_batch_wait_their_turn_in_order() -> None:
    engine = FakeEngine(delay_s=0.2, max_batch=2)
    await engine.start()
    order: list[str] = []

    async def run(rid: str) -> None:
        async for delta in engine.stream(_request(PRESETS["document"], rid=rid)):
            if delta.output is not None:
                order.append(rid)

    first = [asyncio.create_task(run(rid)) for rid in ("a", "b", "c", "d")]
    await asyncio.gather(*first)
    # Two at a time, first come first served: a and b end before c and d start.
    assert set(order[:2]) == {"a", "b"} and set(order[2:]) == {"c", "d"}
    with pytest.raises(ValueError, match="max_batch"):
        FakeEngine(max_batch=0)
