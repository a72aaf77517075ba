"""The seed Truss server's response fields, reproduced for clients of the old API.

The seed (basetenlabs/truss-examples ``deepseek-ocr/model/model.py``) ran the official regex
``findall`` over the raw output and returned its tuples. When the output held ``<|ref|>`` it
returned the long form; otherwise only ``extracted_text``, ``image_size``, ``prompt_used`` and
``model_name`` (no ``has_bounding_boxes`` key). Its ``extracted_text`` replaced each image match
with ``![](image_{k}.jpg)\\n`` and deleted every other match with ``str.replace``, which also
rewrites identical duplicate matches in one go; that is kept, because old clients parse this text.

Two of its defects are not kept. Its ``eval`` of coordinates: nothing here evaluates model text.
And for the OCR shape (``<|grounding|>OCR this image.``, ``Locate``), where each ref holds the text
the model read rather than a layout label, deleting the matches left only the newlines between
them; there each match is replaced by its ref text instead (``image`` included: it is a word read,
not a figure), so ``extracted_text`` keeps the lines in the seed's order and layout.
"""

from __future__ import annotations

from typing import Any

from dsocr.types import ParsedOutput

__all__ = ["legacy_fields"]

_REF, _REF_DET, _DET_END = "<|ref|>", "<|/ref|><|det|>", "<|/det|>"


def _seed_findall(raw: str) -> list[tuple[str, str, str]]:
    """What the seed's ``re.findall(r"(<\\|ref\\|>(.*?)<\\|/ref\\|><\\|det\\|>(.*?)<\\|/det\\|>)", raw,
    re.DOTALL)`` returns, found with ``str.find`` in linear time.

    The lazy groups make each match run from a ``<|ref|>`` to the first ``<|/ref|><|det|>`` after
    it and then to the first ``<|/det|>`` after that; when either is missing no later ``<|ref|>``
    can match either. The regex itself rescans to the end for every unmatched ``<|ref|>``, which
    is quadratic on looping output.
    """
    matches = []
    pos = 0
    while (start := raw.find(_REF, pos)) >= 0:
        middle = raw.find(_REF_DET, start + len(_REF))
        if middle < 0:
            break
        end = raw.find(_DET_END, middle + len(_REF_DET))
        if end < 0:
            break
        pos = end + len(_DET_END)
        matches.append((raw[start:pos], raw[start + len(_REF) : middle], raw[middle + len(_REF_DET) : end]))
    return matches


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
    matches = _seed_findall(raw)
    image_refs = [m[0] for m in matches if "<|ref|>image<|/ref|>" in m[0]]
    other_refs = [m[0] for m in matches if "<|ref|>image<|/ref|>" not in m[0]]
    if parsed.ref_is_text:
        extracted = _refs_as_text(raw, matches)
    else:
        extracted = _seed_extracted_text(raw, image_refs, other_refs)
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


def _seed_extracted_text(raw: str, image_refs: list[str], other_refs: list[str]) -> str:
    """The seed's ``extracted_text`` for document output: image links in, other matches out."""
    extracted = raw
    # Repeating an identical str.replace changes nothing, so duplicates (looping output) are
    # skipped; k still counts every image match, as the seed's enumerate did.
    done: set[str] = set()
    for k, match in enumerate(image_refs):
        if match not in done:
            done.add(match)
            extracted = extracted.replace(match, f"![](image_{k}.jpg)\n")
    for match in dict.fromkeys(other_refs):
        extracted = extracted.replace(match, "")
    return extracted


def _refs_as_text(raw: str, matches: list[tuple[str, str, str]]) -> str:
    """OCR-shape ``extracted_text``: each match replaced by the text in its ref.

    The seed's ``str.replace`` applied to identical duplicates gives the same text, so the
    matches are replaced where they are, in one pass: a ref text holding tag syntax cannot then
    be matched again.
    """
    parts: list[str] = []
    pos = 0
    for full, ref_text, _ in matches:
        start = raw.index(full, pos)
        parts.append(raw[pos:start])
        parts.append(ref_text)
        pos = start + len(full)
    parts.append(raw[pos:])
    return "".join(parts)
