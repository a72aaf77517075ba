"""Truss entry point (``model_class_name: Model``). All logic lives in :mod:`dsocr.truss_adapter`."""

from __future__ import annotations

from typing import Any

from dsocr.truss_adapter import TrussModel


class Model(TrussModel):
    """DeepSeek-OCR behind dsocr: ``load()`` starts the engine, ``predict`` runs ``dsocr.service.predict``."""

    def __init__(self, **kwargs: Any) -> None:
        # Truss passes config, data_dir, secrets, lazy_data_resolver, environment; settings come
        # from the DSOCR_* environment variables that config.yaml sets.
        super().__init__(secrets=kwargs.get("secrets"), lazy_data_resolver=kwargs.get("lazy_data_resolver"))
