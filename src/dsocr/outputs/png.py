"""PNG encoding for the formats that return pictures inside JSON."""

from __future__ import annotations

import base64
import io

from PIL import Image

__all__ = ["png_base64"]


def png_base64(image: Image.Image) -> str:
    """``image`` as a base64 PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
