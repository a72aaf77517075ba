"""The seed Truss server's response fields, reproduced for clients of the old API.

The seed (basetenlabs/truss-examples ``deepseek-ocr/model/model.py``) ran the official regex
``findall`` over the raw output and returned its tuples. When the output held ``<|ref|>`` it
returned the long form; otherwise only ``extracted_text``, ``image_size``, ``prompt_used`` and
``model_name`` (no ``has_bounding_boxes`` key). Its ``extracted_text`` replaced each image match
with ``![](image_{k}.jpg)\\n`` and deleted every other match with ``str.replace``, which also
rewrites identical duplicate matches in one go; that is kept, because old clients parse this text.
Its ``eval`` of coordinates is not: nothing here evaluates model text.
"""

from __future__ import annotations

import re
from typing import Any

from dsocr.types import ParsedOutput

__all__ = ["legacy_fields"]

_SEED_PATTERN = re.compile(r"(<\|ref\|>(.*?)<\|/ref\|><\|det\|>(.*?)<\|/det\|>)", re.DOTALL)


def legacy_fields(parsed: ParsedOutput, *, prompt: str, model_name: str) -> dict[str, Any]:
    """The seed's response dict for ``parsed`` (JSON-serialisable: tuples become lists)."""
    raw = parsed.raw
    image_size = list(parsed.image_size)
    if "<|ref|>" not in raw:
        return {
            "extracted_text": raw,
            "image_size": image_size,
            "prompt_used": prompt,
            "model_name": model_name,
        }
    matches = _SEED_PATTERN.findall(raw)
    image_refs = [m[0] for m in matches if "<|ref|>image<|/ref|>" in m[0]]
    other_refs = [m[0] for m in matches if "<|ref|>image<|/ref|>" not in m[0]]
    extracted = raw
    for k, match in enumerate(image_refs):
        extracted = extracted.replace(match, f"![](image_{k}.jpg)\n")
    for match in other_refs:
        extracted = extracted.replace(match, "")
    return {
        "extracted_text": extracted,
        "raw_output": raw,
        "references": [list(m) for m in matches],
        "image_references": image_refs,
        "other_references": other_refs,
        "image_size": image_size,
        "prompt_used": prompt,
        "model_name": model_name,
        "has_bounding_boxes": len(matches) > 0,
    }
