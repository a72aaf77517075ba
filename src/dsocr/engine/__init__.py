"""Engines: prompt + one image in, text out. ``create_engine(settings.engine)`` picks one.

Backends are imported lazily by the factory, so importing this package loads no vLLM or rapidocr.
"""

from __future__ import annotations

from dsocr.engine.base import Engine, EngineDelta, EngineInfo, EngineOutput, EngineRequest, SamplingOptions
from dsocr.engine.factory import create_engine

__all__ = [
    "Engine",
    "EngineDelta",
    "EngineInfo",
    "EngineOutput",
    "EngineRequest",
    "SamplingOptions",
    "create_engine",
]
