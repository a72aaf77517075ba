"""What makes a page's OCR output what it is: the one keying scheme of the result cache and batch.

:func:`request_fingerprint` lists everything, besides the page's pixels, that the engine's output
for a page depends on: the engine kind, the model actually used and its revision, the full prompt,
the resolution mode, the sampling (n-gram rule and whitelist included), the retry policy and the
dsocr version. :func:`fingerprint_hash` turns such a dict into a stable hash.

The result cache (:mod:`dsocr.cache`) keys a page by this hash, the hash of the page's pixels and
the caller's scope; ``dsocr batch`` keys a document by the hash of its bytes and of this
fingerprint plus what only batch writes (dpi, outputs, file layout). So a change that can change
the output (another prompt, mode, ``max_tokens``, model revision, a new dsocr) misses the cache
and redoes a batch's documents, and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from dsocr import __version__
from dsocr.request import OcrRequest
from dsocr.settings import EngineSettings

__all__ = ["fingerprint_hash", "request_fingerprint"]


def request_fingerprint(request: OcrRequest, *, engine: str, settings: EngineSettings) -> dict[str, Any]:
    """What the engine's output for any page of ``request`` depends on, besides the page, as JSON data.

    ``engine`` is the kind that runs it (``vllm``, ``cpu``, ``fake``: ``auto`` resolved);
    ``settings`` name the default model and its revision. An extra model (``request.model``) is
    named as it is served, without a revision.
    """
    sampling = asdict(request.sampling)
    sampling["whitelist_token_ids"] = sorted(request.sampling.whitelist_token_ids)
    retries = asdict(request.retries)
    retries["temperatures"] = list(request.retries.temperatures)
    default_model = request.model is None
    return {
        "engine": engine,
        "model": settings.model if default_model else request.model,
        "revision": settings.revision if default_model else None,
        "prompt": request.prompt,
        "mode": request.mode,
        "sampling": sampling,
        "retries": retries,
        "dsocr": __version__,
    }


def fingerprint_hash(fingerprint: Mapping[str, Any]) -> str:
    """A stable hash of a fingerprint: SHA-256 (hex) of its canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
