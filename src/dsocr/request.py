"""The one OCR request every front end builds, and the one place it is built and checked.

``/v1/ocr``, ``/predict``, the chat route, ``dsocr ocr`` and ``dsocr batch`` each translate their
own wire format into :func:`build_request`'s arguments and hand the :class:`OcrRequest` to the
pipeline (:mod:`dsocr.pipeline`); nothing about prompts, models, sampling or outputs is decided
anywhere else. Every check raises :class:`~dsocr.errors.InvalidInput` naming the field at fault.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from dsocr import prompts
from dsocr.engine.base import SamplingOptions
from dsocr.errors import InvalidInput, ModelNotFound
from dsocr.inputs import Source
from dsocr.modes import ModelProfile, served_profile
from dsocr.outputs import DEFAULT_OUTPUTS, RenderContext, check_outputs
from dsocr.settings import RETRY_NGRAM_SIZE, EngineSettings, Settings

__all__ = [
    "DEFAULT_MODE",
    "OcrRequest",
    "RetryPolicy",
    "StreamKind",
    "build_request",
    "model_name",
    "model_profile",
    "new_request_id",
    "ngram_defaults",
    "route_model",
    "served_model_names",
    "served_profiles",
]

DEFAULT_MODE = "gundam"

StreamKind = Literal["pages", "blocks", "text"]
"""What the pipeline streams besides page results: nothing more, grounded blocks, or text deltas."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """What happens to a page that ends on ``length`` or scores as repetitive: up to ``attempts``
    more tries, first with shorter n-grams (at most ``ngram_size``) in a ``ngram_window`` window,
    then with a temperature schedule (as olmOCR does); a page still flagged after them keeps its
    flag and warning."""

    attempts: int = 0
    ngram_size: int = RETRY_NGRAM_SIZE
    ngram_window: int = 50
    temperatures: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
    repetition_threshold: float = 0.3

    @classmethod
    def from_settings(cls, engine: EngineSettings) -> RetryPolicy:
        """The policy the settings configure (``DSOCR_ENGINE__RETRY_*``)."""
        return cls(
            attempts=engine.retry_attempts,
            ngram_size=RETRY_NGRAM_SIZE,
            ngram_window=engine.retry_ngram_window,
            temperatures=tuple(engine.retry_temperatures),
            repetition_threshold=engine.repetition_threshold,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class OcrRequest:
    """One OCR request, as every front end builds it.

    ``source`` is ``None`` only where the caller hands the pipeline its pages itself (batch).
    ``model`` is ``None`` for the default model, else an extra served model's name. ``single_image``
    marks doors that read one image (``/predict``, chat): a PDF is refused there. ``cache_scope``
    is whose cached pages the request may reuse and add to (the server's tenant id, ``""`` for a
    local job); ``None`` keeps it away from the result cache (:mod:`dsocr.cache`).
    """

    request_id: str
    source: Source | None
    prompt: str
    prompt_as_sent: str | None = None
    mode: str = DEFAULT_MODE
    model: str | None = None
    public_model: str
    sampling: SamplingOptions
    outputs: frozenset[str] = frozenset(DEFAULT_OUTPUTS)
    pages: str | None = None
    dpi: int | None = None
    single_image: bool = False
    timeout_s: float | None = None
    stream: StreamKind = "pages"
    retries: RetryPolicy = RetryPolicy()
    cache_scope: str | None = None

    def render_context(self, kind: Literal["image", "pdf"] = "image") -> RenderContext:
        """What the output formats echo of this request."""
        return RenderContext(
            request_id=self.request_id,
            model=self.public_model,
            prompt=self.prompt,
            prompt_as_sent=self.prompt_as_sent,
            mode=self.mode,
            kind=kind,
        )


def new_request_id() -> str:
    """A fresh request id (uuid4 hex): unique across processes, so aborts hit the right request."""
    return uuid.uuid4().hex


def model_name(engine: EngineSettings) -> str:
    """The one public name of the default model on every route: the served name, else the model.

    Never the engine's own model (the CPU engine's recognizer, say): clients address the model by
    this name, whichever engine answers.
    """
    return engine.served_model_name or engine.model


def served_model_names(engine: EngineSettings) -> list[str]:
    """The models a client may name: the default model's public name first, then extra models."""
    primary = model_name(engine)
    return [primary, *(name for name in engine.extra_models if name != primary)]


def route_model(requested: str | None, engine: EngineSettings, *, field: str = "model") -> str | None:
    """``None`` for the default model (any of its names), the name for an extra model; else
    ``ModelNotFound`` listing the served models."""
    if requested is None or requested in (engine.served_model_name, engine.model):
        return None
    if requested in engine.extra_models:
        return requested
    served = ", ".join(served_model_names(engine))
    raise ModelNotFound(
        f"The model {requested!r} does not exist on this server; served models: {served} (GET /v1/models).",
        field=field,
    )


def model_profile(model: str | None, engine: EngineSettings) -> ModelProfile:
    """The profile of a routed model (``None`` = the default model, see :func:`route_model`).

    The default model is known by its HF id or directory (``DSOCR_ENGINE__MODEL``; a directory by
    the architecture its ``config.json`` names, else by its name), else by its served name. A model
    no profile knows (a fine-tune whose ``config.json`` names another architecture, in a directory
    of its own name, say) is served as DeepSeek-OCR v1 (:func:`dsocr.modes.served_profile`).
    """
    if model is not None:
        return served_profile(model)
    return served_profile(engine.model, engine.served_model_name)


def served_profiles(engine: EngineSettings) -> list[ModelProfile]:
    """Every served model's profile, the default model's first.

    Reads each model directory's ``config.json`` once (the answers are kept): a server calls it
    off the event loop before it serves, so that no request reads the disk for it.
    """
    return [model_profile(name, engine) for name in (None, *engine.extra_models)]


def ngram_defaults(engine: EngineSettings, profile: ModelProfile) -> tuple[int, int]:
    """The n-gram (size, window) a request gets when it names none: ``DSOCR_ENGINE__NGRAM_SIZE``
    and ``__NGRAM_WINDOW`` where the deployment sets them, else the model's own (v1 30/90, v2
    20/90; docs/models.md)."""
    # Only a value the deployment set overrides the model's: the settings' defaults are v1's.
    chosen = engine.model_fields_set
    size = engine.ngram_size if "ngram_size" in chosen else profile.ngram_size
    window = engine.ngram_window if "ngram_window" in chosen else profile.ngram_window
    return size, window


def build_request(
    settings: Settings,
    *,
    source: Source | None,
    request_id: str | None = None,
    preset: str | None = None,
    prompt: str | None = None,
    target: str | None = None,
    prompt_field: str = "prompt",
    mode: str = DEFAULT_MODE,
    model: str | None = None,
    model_field: str = "model",
    outputs: Iterable[str] | None = None,
    max_tokens: int | None = None,
    max_tokens_field: str = "max_tokens",
    ngram_size: int | None = None,
    ngram_window: int | None = None,
    whitelist_token_ids: Iterable[int] | None = None,
    pages: str | None = None,
    dpi: int | None = None,
    single_image: bool = False,
    deadline: bool = True,
    stream: StreamKind = "pages",
    cache_scope: str | None = None,
) -> OcrRequest:
    """Check a front end's fields and build the request.

    ``prompt`` is a preset name (any case) or a free prompt; ``preset`` (+ ``target`` for
    ``locate``) names one explicitly; neither means the default preset. The model (``model``, else
    the default) decides which modes and presets are on offer and the n-gram defaults
    (:func:`model_profile`). ``ngram_size`` 0 turns the repetition rule off. With ``deadline``, the
    request runs under ``DSOCR_LIMITS__REQUEST_TIMEOUT_S`` (the server's doors; local jobs run without one).
    ``cache_scope`` (see :class:`OcrRequest`): the caller's tenant id on the server, ``""`` for a
    local job, ``None`` to bypass the result cache.
    """
    if prompt is not None and not prompt.strip():
        prompt = None
    try:
        if prompt is not None and preset is None and target is None:
            full_prompt = prompts.prompt_from_text(prompt)
        else:
            full_prompt = prompts.build_prompt(preset, prompt=prompt, target=target)
    except InvalidInput as exc:
        # The prompt module names "prompt"; the user sent the preset's name in ``preset`` or the
        # text in the door's own prompt field.
        field = exc.field
        if field == "prompt":
            field = "preset" if preset is not None and prompt is None else prompt_field
        raise InvalidInput(exc.message, field=field) from exc
    engine_model = route_model(model, settings.engine, field=model_field)
    profile = model_profile(engine_model, settings.engine)
    profile.mode(mode)  # InvalidInput(field="mode") naming the model's modes
    _check_preset(profile, preset=preset, prompt=prompt, target=target, prompt_field=prompt_field)
    chosen = check_outputs(outputs if outputs is not None else DEFAULT_OUTPUTS)
    return OcrRequest(
        request_id=request_id or new_request_id(),
        source=source,
        prompt=full_prompt,
        prompt_as_sent=prompt,
        mode=mode,
        model=engine_model,
        public_model=model_name(settings.engine) if engine_model is None else engine_model,
        sampling=_sampling(
            settings,
            profile,
            max_tokens=max_tokens,
            max_tokens_field=max_tokens_field,
            ngram_size=ngram_size,
            ngram_window=ngram_window,
            whitelist_token_ids=whitelist_token_ids,
        ),
        outputs=chosen,
        pages=pages,
        dpi=dpi,
        single_image=single_image,
        timeout_s=settings.limits.request_timeout_s if deadline else None,
        stream=stream,
        retries=RetryPolicy.from_settings(settings.engine),
        cache_scope=cache_scope,
    )


def _check_preset(
    profile: ModelProfile, *, preset: str | None, prompt: str | None, target: str | None, prompt_field: str
) -> None:
    """``InvalidInput`` when the request names a preset its model was not released with.

    A preset is named by ``preset``, or by a door's prompt text that is a preset's name; a free
    prompt is the client's own and goes to any model as written.
    """
    if preset is not None:
        name, field = preset.strip().lower(), "preset"
    elif prompt is not None and target is None and prompt.strip().lower() in prompts.PRESETS:
        name, field = prompt.strip().lower(), prompt_field
    else:
        name, field = prompts.DEFAULT_PRESET, "preset"
    if name not in profile.presets:
        offered = ", ".join(profile.presets)
        raise InvalidInput(
            f"preset {name!r} is not available for {profile.model_id}; available: {offered}", field=field
        )


def _sampling(
    settings: Settings,
    profile: ModelProfile,
    *,
    max_tokens: int | None,
    max_tokens_field: str,
    ngram_size: int | None,
    ngram_window: int | None,
    whitelist_token_ids: Iterable[int] | None,
) -> SamplingOptions:
    """OCR-safe sampling: greedy, the configured n-gram rule, a bounded length (never clamped)."""
    limit = settings.limits.max_tokens
    if max_tokens is not None and max_tokens < 1:
        raise InvalidInput(f"{max_tokens_field} must be at least 1", field=max_tokens_field)
    if max_tokens is not None and max_tokens > limit:
        raise InvalidInput(
            f"{max_tokens_field} {max_tokens} is over the limit of {limit} (DSOCR_LIMITS__MAX_TOKENS)",
            field=max_tokens_field,
        )
    default_size, default_window = ngram_defaults(settings.engine, profile)
    size = default_size if ngram_size is None else ngram_size
    defaults = SamplingOptions()
    return SamplingOptions(
        max_tokens=limit if max_tokens is None else max_tokens,
        ngram_size=size or None,
        ngram_window=default_window if ngram_window is None else ngram_window,
        whitelist_token_ids=(
            defaults.whitelist_token_ids if whitelist_token_ids is None else frozenset(whitelist_token_ids)
        ),
    )
