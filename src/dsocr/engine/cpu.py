"""The embedded CPU engine: PP-OCRv6 small (rapidocr 3.10 on onnxruntime), the default without a GPU.

It does not run DeepSeek-OCR; it answers each prompt preset in the model's output shape (§5.1) so
that parsing, markdown, boxes, crops and overlays downstream work exactly as with the real model:

* ``document``: paragraph and heading blocks, ``<|ref|>LABEL<|/ref|><|det|>[[…]]<|/det|>`` then
  the text (``# ``/``## `` for lines much taller than the page's median line) and a blank line.
* ``ocr`` (and free prompts with ``<|grounding|>``): one ``<|ref|>line text<|/ref|>`` tag per line.
* ``locate``: one tag with the boxes of the lines containing the target.
* ``free``, ``figure``, ``describe`` and other free prompts: plain text in reading order. The CPU
  engine cannot parse charts or describe pictures; for those presets it returns the OCR text.

Boxes are on the 0–999 grid of the image as sent. Lines are sorted per column (XY-cut, see
``dsocr.engine.layout``).

Engine choices, measured on a 2-core machine (bench/README.md, "CPU engine"):

* The bundled models only: ``PP-OCRv6_det_small.onnx`` and ``PP-OCRv6_rec_small.onnx`` ship inside
  the rapidocr wheel and are passed by path; ``start()`` fails with ``EngineUnavailable`` naming a
  missing file, and rapidocr's downloader is disabled so that nothing is ever fetched.
* The line-rotation classifier is off (``Global.use_cls: False``): on upright pages it flips
  correct lines and garbles them.
* Page orientation, self-contained (no Tesseract): when the first pass reads with low confidence
  (length-weighted mean score below ``ORIENTATION_CONFIDENCE``) the page is read again turned by 180°,
  and a page whose lines are mostly tall is read again turned by 90° (the side chosen from the first
  pass's confidence). The better read wins and its boxes are mapped back onto the image as sent.
  Cost: one extra full OCR pass, paid only by rotated pages and by pages that read badly upright
  (photos, noise); upright pages that read well pay nothing.
* onnxruntime calls block and use every core they are given: they run on one dedicated worker
  thread (requests queue in order, at most ``max_queue`` waiting) so the event loop never blocks.
  ``abort`` drops queued work; an in-flight page cannot be interrupted, so its result is discarded.

Usage: vision tokens are what DeepSeek-OCR would spend on the image (``dsocr.modes``); prompt and
completion tokens are estimates (characters / 4), stated in ``info.details``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dsocr.engine.accounting import estimate_tokens, prompt_tokens, request_profile, vision_tokens
from dsocr.engine.base import EngineDelta, EngineInfo, EngineOutput, EngineRequest, FinishReason
from dsocr.engine.layout import Line, PixelBox, render_pieces
from dsocr.errors import DsocrError, EngineError, EngineOverloaded, EngineUnavailable, InvalidInput
from dsocr.modes import served_profile
from dsocr.prompts import is_grounded, locate_target, preset_of
from dsocr.settings import EngineSettings

__all__ = ["BUNDLED_MODEL_FILES", "CpuEngine", "bundled_models_dir"]

logger = logging.getLogger(__name__)

RAPIDOCR_VERSION = "3.10.0"
BUNDLED_MODEL_FILES = ("PP-OCRv6_det_small.onnx", "PP-OCRv6_rec_small.onnx")
# Upright pages read at 0.96–0.99 mean confidence, upside-down or sideways ones at about 0.69
# (synthetic A4 page, rapidocr 3.10): a re-read in another orientation is tried below this.
ORIENTATION_CONFIDENCE = 0.85
# A page is sideways when most lines with a few characters are much taller than wide.
TALL_RATIO = 1.5


def bundled_models_dir() -> Path | None:
    """Where the rapidocr wheel keeps its bundled models, found without importing rapidocr."""
    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@dataclass(slots=True)
class _Job:
    request_id: str
    aborted: bool = False
    enqueued: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    rotation: int = 0


class CpuEngine:
    """PP-OCRv6 small on onnxruntime, answering in DeepSeek-OCR's output shapes (module docstring).

    ``models_dir`` defaults to rapidocr's bundled ``models`` folder; ``threads`` (onnxruntime
    intra-op threads) defaults to every core; ``max_queue`` bounds the requests waiting for the worker.
    """

    def __init__(
        self,
        settings: EngineSettings,
        *,
        models_dir: Path | None = None,
        threads: int | None = None,
        max_queue: int = 512,
    ) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self._settings = settings
        # Usage counts vision tokens as the request's model would (v1 or v2); this is the default's.
        self._profile = served_profile(settings.model, settings.served_model_name)
        self._models_dir = models_dir
        self._threads = threads or os.cpu_count() or 1
        self._max_queue = max_queue
        self._ocr: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            name="cpu",
            model_id="PP-OCRv6_small (rapidocr)",
            version=RAPIDOCR_VERSION,
            modes=("tiny", "small", "base", "large", "gundam"),
            # One page at a time (one onnxruntime session, its threads on one page).
            batch_size=1,
            details={
                "models_dir": str(self._models_dir or bundled_models_dir()),
                "onnxruntime_threads": str(self._threads),
                "prompt_tokens": (
                    "1 + the model's vision tokens (DeepSeek-OCR or DeepSeek-OCR 2) + prompt characters / 4 "
                    "(estimate)"
                ),
                "completion_tokens": "output characters / 4 (estimate)",
                "limitations": "Parse the figure and Describe return the OCR text; no chart, formula or "
                "table structure",
                "orientation": "re-read turned 180° or 90° when the first pass has low confidence",
            },
        )

    async def start(self) -> None:
        """Check the bundled model files, load both models and read a warm-up image (self-test)."""
        models_dir = self._models_dir or bundled_models_dir()
        if models_dir is None:
            raise EngineUnavailable(
                "the CPU engine needs rapidocr, which is not installed: pip install 'dsocr[cpu]'"
            )
        for name in BUNDLED_MODEL_FILES:
            if not (models_dir / name).is_file():
                raise EngineUnavailable(
                    f"the CPU engine's model file {models_dir / name} is missing; reinstall "
                    f"rapidocr=={RAPIDOCR_VERSION} (it ships the model in its wheel)"
                )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsocr-cpu-ocr")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._load, models_dir)
        except EngineUnavailable:
            await self.close()
            raise
        except Exception as exc:
            await self.close()
            raise EngineUnavailable(f"the CPU engine failed to load its models: {exc}") from exc

    async def close(self) -> None:
        """Drop queued work and stop the worker thread; idempotent."""
        with self._lock:
            for job in self._jobs.values():
                job.aborted = True
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)
        self._ocr = None

    async def check_health(self) -> None:
        """Raise ``EngineUnavailable`` unless started."""
        if self._ocr is None or self._executor is None:
            raise EngineUnavailable("the CPU engine is not started")

    async def abort(self, request_id: str) -> None:
        """Drop a queued request, or discard the result of the one being read. Unknown ids are ignored."""
        with self._lock:
            job = self._jobs.get(request_id)
            if job is not None:
                job.aborted = True

    async def generate(self, request: EngineRequest) -> EngineOutput:
        """Read one page and return the whole output (see ``stream``)."""
        async for delta in self.stream(request):
            if delta.output is not None:
                return delta.output
        raise EngineError("the CPU engine ended a stream without a final output")  # pragma: no cover

    async def stream(self, request: EngineRequest) -> AsyncIterator[EngineDelta]:
        """Read the page, then yield one delta per block and a final delta with the ``EngineOutput``."""
        await self.check_health()
        image = request.image
        if image is None:
            raise InvalidInput("the CPU engine reads an image; the request has none", field="image")
        profile = request_profile(request.model, self._profile)
        vision = vision_tokens(image.width, image.height, request.mode, profile)
        job = self._enqueue(request.request_id)
        try:
            pieces = await self._read(job, request, image)
            finish: FinishReason = "abort" if job.aborted else "stop"
            emitted: list[str] = []
            budget = request.sampling.max_tokens
            first_token_s: float | None = None
            for piece in [] if job.aborted else pieces:
                if job.aborted:
                    finish = "abort"
                    break
                text = piece
                cost = estimate_tokens(piece)
                if cost > budget:
                    text = piece[: budget * 4]
                    finish = "length"
                budget -= estimate_tokens(text)
                if text:
                    if first_token_s is None:
                        first_token_s = time.monotonic() - job.enqueued
                    emitted.append(text)
                    yield EngineDelta(request_id=request.request_id, text=text)
                if finish == "length":
                    break
        except (GeneratorExit, asyncio.CancelledError):
            job.aborted = True
            raise
        finally:
            with self._lock:
                self._jobs.pop(request.request_id, None)
        full = "".join(emitted)
        now = time.monotonic()
        output = EngineOutput(
            request_id=request.request_id,
            text=full,
            finish_reason=finish,
            prompt_tokens=prompt_tokens(request.prompt, vision),
            vision_tokens=vision,
            completion_tokens=estimate_tokens(full),
            queue_s=(job.started or now) - job.enqueued,
            first_token_s=first_token_s,
            total_s=now - job.enqueued,
        )
        yield EngineDelta(request_id=request.request_id, text="", finish_reason=finish, output=output)

    def _enqueue(self, request_id: str) -> _Job:
        with self._lock:
            if request_id in self._jobs:
                raise InvalidInput(f"request id {request_id!r} is already running", field="request_id")
            waiting = sum(1 for job in self._jobs.values() if job.started is None)
            if waiting >= self._max_queue:
                raise EngineOverloaded(
                    f"the CPU engine has {waiting} pages waiting (limit {self._max_queue}); retry later",
                    retry_after=5.0,
                )
            job = _Job(request_id)
            self._jobs[request_id] = job
            return job

    async def _read(self, job: _Job, request: EngineRequest, image: Image.Image) -> list[str]:
        executor = self._executor
        if executor is None:
            raise EngineUnavailable("the CPU engine is not started")
        loop = asyncio.get_running_loop()
        try:
            read = await loop.run_in_executor(executor, self._read_page, job, image)
        except DsocrError:
            raise
        except Exception as exc:  # onnxruntime/OpenCV failures on odd images: one typed error
            logger.exception("CPU engine failed on request %s", job.request_id)
            raise EngineError(f"the CPU engine failed to read the page: {type(exc).__name__}: {exc}") from exc
        if read is None:
            return []
        lines, to_output = read
        prompt = request.prompt
        return render_pieces(
            preset_of(prompt),
            lines,
            image.size,
            grounded=is_grounded(prompt),
            target=locate_target(prompt),
            to_output=to_output,
        )

    # --- worker thread -------------------------------------------------------------------------

    def _load(self, models_dir: Path) -> None:
        _forbid_downloads()
        from rapidocr import RapidOCR

        self._ocr = RapidOCR(
            params={
                "Global.use_cls": False,
                "Global.log_level": "warning",
                "Global.model_root_dir": str(models_dir),
                "Det.model_path": str(models_dir / BUNDLED_MODEL_FILES[0]),
                "Rec.model_path": str(models_dir / BUNDLED_MODEL_FILES[1]),
                "EngineConfig.onnxruntime.intra_op_num_threads": self._threads,
            }
        )
        lines = self._recognise(_warm_up_image())
        if not any("dsocr" in line.text.lower() for line in lines):
            read = " | ".join(line.text for line in lines) or "nothing"
            raise EngineUnavailable(f"the CPU engine's self-test failed: it read {read!r} from 'dsocr 2024'")

    def _read_page(
        self, job: _Job, image: Image.Image
    ) -> tuple[list[Line], Callable[[PixelBox], PixelBox]] | None:
        if job.aborted:  # dropped while queued
            return None
        job.started = time.monotonic()
        first = self._recognise(image)
        best, best_rotation = first, 0
        for rotation in _orientation_candidates(first):
            turned = self._recognise(image.transpose(_TRANSPOSE[rotation]))
            if _confidence(turned) > _confidence(best) - (0.02 if rotation in (90, 270) else 0.0):
                best, best_rotation = turned, rotation
        job.rotation = best_rotation
        job.finished = time.monotonic()
        return best, _back_to_original(best_rotation, image.size)

    def _recognise(self, image: Image.Image) -> list[Line]:
        result = self._ocr(np.asarray(image.convert("RGB")))
        if not getattr(result, "txts", None):
            return []
        lines = []
        for quad, text, score in zip(result.boxes, result.txts, result.scores, strict=True):
            xs = [float(p[0]) for p in quad]
            ys = [float(p[1]) for p in quad]
            lines.append(Line(text=str(text), box=(min(xs), min(ys), max(xs), max(ys)), score=float(score)))
        return lines


# PIL turns counter-clockwise: ROTATE_90 turns the page a quarter turn to the left.
_TRANSPOSE = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def _orientation_candidates(lines: list[Line]) -> list[int]:
    """Which turned copies of the page to read again, given the upright read."""
    if not lines:
        return []
    confidence = _confidence(lines)
    worded = [line for line in lines if len(line.text) >= 3] or lines
    tall = sum(1 for line in worded if (line.box[3] - line.box[1]) > TALL_RATIO * (line.box[2] - line.box[0]))
    if tall > len(worded) / 2:
        # rapidocr turns tall line crops a quarter turn left before reading them: if that read
        # well, the page needs the same turn; otherwise it needs the other one.
        return [90] if confidence >= ORIENTATION_CONFIDENCE else [270]
    return [180] if confidence < ORIENTATION_CONFIDENCE else []


def _confidence(lines: list[Line]) -> float:
    """Length-weighted mean recognition score."""
    if not lines:
        return 0.0
    weights = [max(len(line.text), 1) for line in lines]
    return statistics.fmean([line.score for line in lines], weights=weights)


def _back_to_original(rotation: int, size: tuple[int, int]) -> Callable[[PixelBox], PixelBox]:
    """Map a box on the page turned counter-clockwise by ``rotation`` back onto the page as sent."""
    width, height = size

    def point(x: float, y: float) -> tuple[float, float]:
        if rotation == 90:
            return width - y, x
        if rotation == 180:
            return width - x, height - y
        if rotation == 270:
            return y, height - x
        return x, y

    def box(b: PixelBox) -> PixelBox:
        (ax, ay), (bx, by) = point(b[0], b[1]), point(b[2], b[3])
        return (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))

    return box


def _warm_up_image() -> Image.Image:
    image = Image.new("RGB", (480, 120), "white")
    ImageDraw.Draw(image).text((30, 30), "dsocr 2024", fill="black", font=ImageFont.load_default(size=48))
    return image


def _forbid_downloads() -> None:
    """Make any rapidocr download attempt fail loudly instead of reaching the network.

    rapidocr fetches models, dictionaries and fonts from modelscope.cn whenever a configured file is
    absent, and has no offline switch. Every such fetch goes through ``DownloadFile.run``.
    """
    from rapidocr.utils.download_file import DownloadFile

    def refuse(cls: type, input_params: Any) -> None:
        raise EngineUnavailable(
            f"rapidocr tried to download {getattr(input_params, 'file_url', '?')}; the CPU engine only "
            "uses the models bundled in the rapidocr wheel"
        )

    DownloadFile.run = classmethod(refuse)  # type: ignore[method-assign,assignment]
