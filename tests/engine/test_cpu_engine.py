"""The embedded CPU engine on real pages: accuracy, column order, orientation, preset shapes, queueing.

Each page costs seconds on a small machine, so the engine is started once per session and the
synthetic page is read once per prompt shape.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from engine_pages import SUB_TITLES, TITLE, two_column_page
from PIL import Image
from wordscore import word_f1, words

from dsocr.engine.base import EngineOutput, EngineRequest
from dsocr.engine.cpu import BUNDLED_MODEL_FILES, CpuEngine, bundled_models_dir
from dsocr.errors import EngineUnavailable, InvalidInput
from dsocr.grounding import parse
from dsocr.prompts import PRESETS, build_prompt
from dsocr.settings import EngineSettings

PAGE = two_column_page()


async def _read(engine: CpuEngine, image: Image.Image, prompt: str, rid: str) -> EngineOutput:
    return await engine.generate(EngineRequest(request_id=rid, prompt=prompt, image=image))


@pytest.fixture(scope="module")
def free_text(cpu_engine: CpuEngine) -> str:
    return asyncio.run(_read(cpu_engine, PAGE.image, PRESETS["free"], "free-upright")).text


@pytest.mark.slow
def test_two_column_page_reads_accurately_and_column_by_column(free_text: str) -> None:
    assert word_f1(free_text, PAGE.all_text) >= 0.9
    # Column 1 words and column 2 words come from disjoint vocabularies: every column-1 word must be
    # read before the first column-2 word.
    col1, col2 = set(words(PAGE.column_texts[0])), set(words(PAGE.column_texts[1]))
    found = [w for w in words(free_text) if w in col1 or w in col2]
    first_col2 = next(i for i, w in enumerate(found) if w in col2)
    assert all(w in col2 for w in found[first_col2:])
    assert free_text.index(SUB_TITLES[0]) < free_text.index(SUB_TITLES[1])


@pytest.mark.slow
async def test_upside_down_page_reads_correctly_with_boxes_on_the_image_as_sent(
    cpu_engine: CpuEngine, free_text: str
) -> None:
    turned = PAGE.image.rotate(180)
    prompt = PRESETS["ocr"]
    out = await _read(cpu_engine, turned, prompt, "upside-down")
    parsed = parse(out.text, width=turned.width, height=turned.height, prompt=prompt)
    assert word_f1(parsed.text, PAGE.all_text) >= 0.9
    title = next(b for b in parsed.blocks if b.text == TITLE)
    # The title sits at the top of the upright page, so at the bottom of the turned one.
    assert title.boxes[0][1] > 850


@pytest.mark.slow
async def test_document_prompt_gives_title_and_paragraph_blocks(cpu_engine: CpuEngine) -> None:
    prompt = PRESETS["document"]
    out = await _read(cpu_engine, PAGE.image, prompt, "document")
    assert out.finish_reason == "stop"
    assert out.vision_tokens == 903  # A4 at 150 DPI in Gundam mode: grid (2, 3)
    assert out.completion_tokens > 0 and out.total_s > 0
    parsed = parse(out.text, width=PAGE.image.width, height=PAGE.image.height, prompt=prompt)
    assert not parsed.warnings
    assert parsed.blocks[0].label == "title" and parsed.blocks[0].text.endswith(TITLE)
    assert parsed.markdown.startswith(f"# {TITLE}")
    text_blocks = [b for b in parsed.blocks if b.label == "text"]
    # 22 lines per column in 3 paragraphs plus a sub-title: paragraphs are grouped, not one block per line.
    assert 4 <= len(text_blocks) <= 12
    # The title box, mapped back to pixels, covers where it was drawn (x 100, y 90 to ~150).
    x1, y1, x2, y2 = parsed.blocks[0].boxes_px[0]
    assert x1 < 110 and y1 < 100 and x2 > 600 and 140 < y2 < 180


@pytest.mark.slow
async def test_locate_finds_the_line_holding_the_target(cpu_engine: CpuEngine) -> None:
    prompt = build_prompt("locate", target="southern survey")
    out = await _read(cpu_engine, PAGE.image, prompt, "locate")
    parsed = parse(out.text, width=PAGE.image.width, height=PAGE.image.height, prompt=prompt)
    assert [b.label for b in parsed.blocks] == ["southern survey"]
    x1, y1, _, _ = parsed.blocks[0].boxes_px[0]
    assert 640 < x1 < 680 and 200 < y1 < 240  # drawn at (660, 220)


@pytest.mark.slow
async def test_stream_yields_one_delta_per_block_then_the_output(cpu_engine: CpuEngine) -> None:
    request = EngineRequest(
        request_id="stream", prompt=PRESETS["ocr"], image=PAGE.image.crop((0, 0, 1240, 420))
    )
    deltas = [d async for d in cpu_engine.stream(request)]
    final = deltas[-1].output
    assert final is not None and final.finish_reason == "stop"
    assert len(deltas) - 1 == final.text.count("<|ref|>") >= 3
    assert "".join(d.text for d in deltas) == final.text


@pytest.mark.slow
async def test_abort_drops_a_queued_request_and_discards_a_running_one(cpu_engine: CpuEngine) -> None:
    first = asyncio.create_task(_read(cpu_engine, PAGE.image, PRESETS["free"], "running"))
    second = asyncio.create_task(_read(cpu_engine, PAGE.image, PRESETS["free"], "queued"))
    await asyncio.sleep(0.2)
    await cpu_engine.abort("queued")
    await cpu_engine.abort("running")
    await cpu_engine.abort("unknown-id")  # ignored
    running, queued = await asyncio.gather(first, second)
    assert running.finish_reason == queued.finish_reason == "abort"
    assert running.text == queued.text == ""


async def test_request_without_image_is_a_typed_input_error(cpu_engine: CpuEngine) -> None:
    with pytest.raises(InvalidInput) as info:
        await cpu_engine.generate(EngineRequest(request_id="no-image", prompt=PRESETS["free"], image=None))
    assert info.value.field == "image"


async def test_start_fails_naming_a_missing_bundled_model_file(tmp_path: Path) -> None:
    bundled = bundled_models_dir()
    assert bundled is not None
    shutil.copy(bundled / BUNDLED_MODEL_FILES[0], tmp_path / BUNDLED_MODEL_FILES[0])
    engine = CpuEngine(EngineSettings(kind="cpu"), models_dir=tmp_path)
    with pytest.raises(EngineUnavailable, match=BUNDLED_MODEL_FILES[1]):
        await engine.start()
    with pytest.raises(EngineUnavailable):
        await engine.check_health()


async def test_a_download_attempt_is_refused(tmp_path: Path) -> None:
    # rapidocr downloads whenever a configured model, dictionary or font is absent; once the CPU
    # engine is loaded, any such attempt fails instead of reaching the network.
    from rapidocr.utils.download_file import DownloadFile, DownloadFileInput

    from dsocr.engine.cpu import _forbid_downloads

    _forbid_downloads()
    with pytest.raises(EngineUnavailable, match="tried to download"):
        DownloadFile.run(
            DownloadFileInput(
                file_url="https://example.invalid/m.onnx", sha256=None, save_path=tmp_path / "m", logger=None
            )
        )


@pytest.mark.slow
@pytest.mark.network
async def test_real_scans_read_their_known_words(cpu_engine: CpuEngine) -> None:
    import docs

    pdf = pdfium.PdfDocument(docs.require("c03-29.pdf"))
    try:
        huck = pdf[0].render(scale=144 / 72).to_pil().convert("RGB")
    finally:
        pdf.close()
    out = await _read(cpu_engine, huck, PRESETS["free"], "huckfinn")
    for word in ("watson", "widow", "hooks", "deacon", "spiritual"):
        assert word in words(out.text), word

    linn = Image.open(docs.require("linn.png")).convert("RGB")
    out = await _read(cpu_engine, linn, PRESETS["document"], "linn")
    parsed = parse(out.text, width=linn.width, height=linn.height, prompt=PRESETS["document"])
    assert parsed.blocks[0].label == "title"
    assert "LinnSequencer" in parsed.blocks[0].text
    for word in ("midi", "sequencer", "overdub", "chorus"):
        assert word in words(parsed.text), word
    # A 2-column datasheet: the left column's section comes before the right column's.
    assert parsed.text.index("Recording a Sequence") < parsed.text.index("Creating a Song")


async def test_blank_and_tiny_images_give_empty_output_not_an_error(cpu_engine: CpuEngine) -> None:
    for size in ((1, 1), (300, 200)):
        out = await _read(cpu_engine, Image.new("RGB", size, "white"), PRESETS["document"], f"blank-{size}")
        assert out.finish_reason == "stop"
        assert out.text == ""
