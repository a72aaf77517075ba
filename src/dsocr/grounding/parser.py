"""Raw model text → typed blocks, clean markdown and plain text. Total: never raises.

Grammar of grounded output (§5.1)::

    <|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>\\nCONTENT\\n\\n

The text is scanned once for the four tag tokens; everything between them is assigned to a block,
so nothing the model wrote is dropped without a warning:

- text before the first tag (or the whole answer of an untagged prompt such as ``Free OCR.``)
  becomes a block labelled ``text`` with no boxes;
- a missing ``<|/ref|>`` or ``<|/det|>`` (or output cut off inside one) ends the label or the
  coordinate list at the next tag or newline, with a warning;
- ``<|det|>`` without a ``<|ref|>`` before it gives a block with the empty label;
- stray closing tags inside content are removed, with a warning.

Two output shapes share the grammar. Document prompts (``Convert the document to markdown.``)
use the ref as a layout label and put the content after the tags. OCR-style prompts
(``<|grounding|>OCR this image.``, ``Locate <|ref|>x<|/ref|>``) put the recognised text inside
the ref; then a block's ``text`` is its label. The shape is taken from the prompt when it is one
of those, else guessed: every ref has no content after it and some label is not a layout label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dsocr.grounding.boxes import parse_coordinates, to_pixels
from dsocr.grounding.geometry import parse_geometry
from dsocr.grounding.markdown import clean_markdown_text, image_link, join_markdown, markdown_to_text
from dsocr.prompts import preset_of
from dsocr.types import Block, Box, ParsedOutput

__all__ = ["EOS", "LAYOUT_LABELS", "MAX_WARNINGS", "parse", "ref_is_text_for_prompt"]

# Labels seen in real document outputs (§5.1; the set is not enumerated anywhere upstream).
LAYOUT_LABELS = frozenset(
    {
        "title",
        "sub_title",
        "text",
        "image",
        "image_caption",
        "table",
        "table_caption",
        "table_footnote",
        "equation",
        "figure_title",
        "header",
        "footer",
        "footnote",
    }
)
EOS = "<｜end▁of▁sentence｜>"
# A garbage or looping answer can produce thousands of identical complaints; keep the list readable.
MAX_WARNINGS = 100

_OCR_SHAPE_MARKERS = ("Locate <|ref|>", "<|grounding|>OCR this image", "<|grounding|>OCR the image")
# A whole well-formed header (label and coordinates without tags inside), else any single tag.
_TOKEN = re.compile(
    r"<\|ref\|>(?P<label>[^<]*)<\|/ref\|><\|det\|>(?P<coords>[^<]*)<\|/det\|>|<\|/?(?:ref|det)\|>"
)
_REF, _REF_END, _DET, _DET_END = "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>"


def ref_is_text_for_prompt(prompt: str | None) -> bool | None:
    """Whether ``prompt`` asks for the OCR shape (ref = recognised text): True, False, or None
    when the prompt does not say (custom prompts, no prompt)."""
    if prompt is None:
        return None
    preset = preset_of(prompt)
    if preset in ("ocr", "locate"):
        return True
    if preset == "document":
        return False
    # Near-variants of the presets: the paper's "OCR the image.", extra words around them.
    if any(marker in prompt for marker in _OCR_SHAPE_MARKERS):
        return True
    if "Convert the document to markdown" in prompt:
        return False
    return None


@dataclass(slots=True)
class _Segment:
    """One ref (or the loose text before the first ref) while scanning."""

    label: str | None  # None: loose text, not introduced by a tag
    boxes: list[Box] = field(default_factory=list)
    content: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(self.content).strip()


def _scan(raw: str, warnings: list[str]) -> tuple[list[_Segment], bool]:
    """Split ``raw`` into segments. Returns ``(segments, saw_any_tag)``."""
    tags = list(_TOKEN.finditer(raw))
    current = _Segment(label=None)
    segments = [current]
    pos = 0
    i = 0
    n = len(tags)
    while i < n:
        tag = tags[i]
        current.content.append(raw[pos : tag.start()])
        coords = tag.group("coords")
        if coords is not None:
            # A complete ref + det header in one token: the common case, one regex match per block.
            current = _Segment(label=tag.group("label").strip())
            segments.append(current)
            current.boxes, box_warnings = parse_coordinates(coords)
            warnings.extend(box_warnings)
            pos = tag.end()
            i += 1
            continue

        token = tag.group(0)
        if token in (_REF_END, _DET_END):
            warnings.append(f"stray {token} at offset {tag.start()} removed")
            pos = tag.end()
            i += 1
            continue

        if token == _REF:
            nxt = tags[i + 1] if i + 1 < n else None
            if nxt is not None and nxt.group(0) == _REF_END:
                label = raw[tag.end() : nxt.start()]
                pos = nxt.end()
                i += 2
            elif nxt is not None and nxt.group(0) == _DET:
                label = raw[tag.end() : nxt.start()]
                warnings.append(f"missing <|/ref|> after label {label.strip()[:60]!r}")
                pos = nxt.start()
                i += 1
            else:
                end = nxt.start() if nxt is not None else len(raw)
                label, newline, _ = raw[tag.end() : end].partition("\n")
                where = (
                    "output ends inside a <|ref|> label (truncated?)"
                    if nxt is None and not newline
                    else "missing <|/ref|>; label ends at the line break"
                )
                warnings.append(f"{where}: {label.strip()[:60]!r}")
                pos = tag.end() + len(label)
                i += 1
            current = _Segment(label=label.strip())
            segments.append(current)
            # Boxes belong to this ref only when <|det|> follows with nothing but whitespace between.
            if i < n and tags[i].group(0) == _DET and not raw[pos : tags[i].start()].strip():
                pos, i = _read_det(raw, tags, i, current, warnings)
            continue

        # <|det|> with no ref before it.
        warnings.append(f"coordinates without a <|ref|> label at offset {tag.start()}")
        current = _Segment(label="")
        segments.append(current)
        pos, i = _read_det(raw, tags, i, current, warnings)
    current.content.append(raw[pos:])
    return segments, n > 0


def _read_det(
    raw: str, tags: list[re.Match[str]], i: int, segment: _Segment, warnings: list[str]
) -> tuple[int, int]:
    """Read the coordinate list opened by ``tags[i]``; return the new ``(pos, i)``."""
    det = tags[i]
    nxt = tags[i + 1] if i + 1 < len(tags) else None
    truncated = False
    if nxt is not None and nxt.group(0) == _DET_END:
        literal = raw[det.end() : nxt.start()]
        pos, i = nxt.end(), i + 2
    else:
        end = nxt.start() if nxt is not None else len(raw)
        literal, newline, _ = raw[det.end() : end].partition("\n")
        truncated = nxt is None and not newline
        if truncated:
            warnings.append(f"output ends inside a <|det|> coordinate list (truncated?): {literal[:60]!r}")
        else:
            warnings.append(f"missing <|/det|>; coordinate list ends at the line break: {literal[:60]!r}")
        pos, i = det.end() + len(literal), i + 1
    segment.boxes, box_warnings = parse_coordinates(literal)
    if truncated:
        # Said once above; the coordinate reader would repeat it for the cut-off group.
        box_warnings = [w for w in box_warnings if not w.startswith("unterminated")]
    warnings.extend(box_warnings)
    return pos, i


def _guess_ref_is_text(segments: list[_Segment]) -> bool:
    refs = [s for s in segments if s.label is not None]
    return bool(refs) and all(not s.text() for s in refs) and any(s.label not in LAYOUT_LABELS for s in refs)


def _px(boxes: tuple[Box, ...], width: int, height: int) -> tuple[Box, ...]:
    if not boxes:
        return ()
    return tuple(to_pixels(b, width, height) for b in boxes)


def parse(raw: str, *, width: int, height: int, prompt: str | None = None) -> ParsedOutput:
    """Parse one page's raw model text. Never raises; problems become ``warnings``.

    ``width`` and ``height`` are the size of the image the user sent (after EXIF rotation);
    pixel boxes are ``int(v / 999 * W)``. ``prompt`` tells the document shape from the OCR shape
    (see the module docstring); without it the shape is guessed.
    """
    warnings: list[str] = []
    if width <= 0 or height <= 0:
        warnings.append(f"image size {width}x{height} is not positive; pixel boxes are zero")
        width, height = max(width, 0), max(height, 0)
    # The end-of-sentence token is a stop marker, not content (the official PDF script keeps it
    # in the text to test for normal completion).
    body = raw.replace(EOS, "") if EOS in raw else raw
    segments, saw_tag = _scan(body, warnings)

    ref_is_text = ref_is_text_for_prompt(prompt)
    if ref_is_text is None:
        ref_is_text = _guess_ref_is_text(segments)

    blocks: list[Block] = []
    parts: list[str] = []
    crop_boxes: list[Box] = []

    def add(label: str, text: str, boxes: tuple[Box, ...] = (), crop_index: int | None = None) -> None:
        blocks.append(
            Block(
                index=len(blocks),
                label=label,
                text=text,
                boxes=boxes,
                boxes_px=_px(boxes, width, height),
                crop_index=crop_index,
            )
        )

    for segment in segments:
        content = segment.text()
        if segment.label is None:
            if content:
                add("text", content)
                parts.append(content if ref_is_text else clean_markdown_text(content))
            continue
        boxes = tuple(segment.boxes)
        if ref_is_text:
            add(segment.label, segment.label, boxes)
            parts.append(segment.label)
            if content:
                warnings.append(f"text after OCR box {segment.label[:40]!r} kept as its own block")
                add("text", content)
                parts.append(content)
        elif segment.label == "image":
            crop_index = len(crop_boxes) if boxes else None
            add("image", content, boxes, crop_index)
            links = []
            for box in boxes:
                links.append(image_link(len(crop_boxes)))
                crop_boxes.append(box)
            parts.append("\n".join([*links, clean_markdown_text(content)]).strip())
        else:
            add(segment.label, content, boxes)
            parts.append(clean_markdown_text(content))

    if ref_is_text:
        markdown = "\n".join(p for p in parts if p)
        text = markdown
    else:
        markdown = join_markdown(parts)
        text = markdown_to_text(markdown)

    geometry = None
    if "line_type" in body:
        geometry, geometry_warnings = parse_geometry(body)
        warnings.extend(geometry_warnings)

    if len(warnings) > MAX_WARNINGS:
        dropped = len(warnings) - MAX_WARNINGS
        warnings = [*warnings[:MAX_WARNINGS], f"{dropped} more warnings not shown"]
    return ParsedOutput(
        raw=raw,
        blocks=tuple(blocks),
        markdown=markdown,
        text=text,
        warnings=tuple(warnings),
        image_size=(width, height),
        has_grounding=saw_tag,
        geometry=geometry,
        crop_boxes_px=_px(tuple(crop_boxes), width, height),
        ref_is_text=ref_is_text,
    )
