"""dsocr: a production server for the DeepSeek-OCR vision-language OCR models.

``import dsocr`` is light: it loads no vLLM, FastAPI, Ray or torch.
"""

from __future__ import annotations

from dsocr.errors import (
    ConfigError,
    DsocrError,
    EngineError,
    EngineOverloaded,
    EngineTimeout,
    EngineUnavailable,
    FetchFailed,
    InputTooLarge,
    InvalidInput,
    Unauthorized,
    UndecodableInput,
    UnsupportedMediaType,
)
from dsocr.settings import Settings
from dsocr.types import Block, Box, ParsedOutput

__version__ = "0.1.0"

__all__ = [
    "Block",
    "Box",
    "ConfigError",
    "DsocrError",
    "EngineError",
    "EngineOverloaded",
    "EngineTimeout",
    "EngineUnavailable",
    "FetchFailed",
    "InputTooLarge",
    "InvalidInput",
    "ParsedOutput",
    "Settings",
    "Unauthorized",
    "UndecodableInput",
    "UnsupportedMediaType",
    "__version__",
]
