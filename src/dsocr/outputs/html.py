"""``html``: the markdown rendered as a standalone HTML document, sanitised like the playground.

The model's markdown is untrusted. It is rendered by markdown-it (CommonMark, tables, HTML
tables as the model writes them; TeX kept verbatim as code, as the playground shows it), then
cleaned by nh3 (ammonia) to the playground's allow-list: markdown's tags and the table tags,
``href``/``src``/``alt``/``title``/``colspan``/``rowspan``/``align``/``start``, http(s) and mailto
links only. The only images are the page's own figure crops, inlined as ``data:`` URIs; any other
image the model wrote is dropped. The document also carries a Content-Security-Policy that
allows no script at all.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import nh3
from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline

from dsocr import grounding
from dsocr.outputs.base import FileContext, Output, RenderContext
from dsocr.outputs.png import png_base64

if TYPE_CHECKING:
    from PIL import Image

    from dsocr.results import PageResult

__all__ = ["ALLOWED_ATTRIBUTES", "ALLOWED_TAGS", "OUTPUT", "html_document", "page_html"]

# The playground's allow-list (src/dsocr/static/app.js, ALLOWED_TAGS and ALLOWED_ATTR).
ALLOWED_TAGS = frozenset(
    {
        "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "em", "strong", "del", "s", "sub", "sup",
        "blockquote", "ul", "ol", "li", "pre", "code", "a", "img",
        "table", "thead", "tbody", "tfoot", "tr", "th", "td", "caption", "colgroup", "col",
    }
)  # fmt: skip
ALLOWED_ATTRIBUTES = frozenset({"href", "src", "alt", "title", "colspan", "rowspan", "align", "start"})
_URL_SCHEMES = frozenset({"http", "https", "mailto"})
# How the parser links crop i of a page (dsocr.grounding.markdown.image_link).
_CROP_SRC = re.compile(r"^images/(\d+)\.png$")
_IMG_CROP = re.compile(r'(<img\b[^>]*?\ssrc=")images/(\d+)\.png(")')
_STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; }
section.page + section.page { border-top: 1px solid #ccc; margin-top: 2rem; padding-top: 1rem; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #bbb; padding: 0.25rem 0.5rem; vertical-align: top; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2rem; }
.failed { color: #a00; }
""".strip()
# Defence in depth: even markup that got past the sanitiser could not run a script.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _tex(state: StateInline, silent: bool) -> bool:
    """``\\( … \\)`` and ``\\[ … \\]`` kept verbatim as code (markdown would eat the backslash)."""
    src, pos = state.src, state.pos
    if not src.startswith(("\\(", "\\["), pos):
        return False
    closing = "\\)" if src[pos + 1] == "(" else "\\]"
    end = src.find(closing, pos + 2)
    if end < 0:
        return False
    if not silent:
        token = state.push("code_inline", "code", 0)
        token.content = src[pos : end + 2]
    state.pos = end + 2
    return True


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    parser = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    parser.inline.ruler.before("escape", "tex", _tex)
    return parser


def page_html(markdown: str, crops: Sequence[str] = ()) -> str:
    """One page's markdown as a sanitised HTML fragment; ``crops`` are its figure crops (base64
    PNGs, in link order), inlined where the markdown links them."""

    def keep(element: str, attribute: str, value: str) -> str | None:
        if element == "img" and attribute == "src":
            match = _CROP_SRC.match(value)
            return value if match is not None and int(match.group(1)) < len(crops) else None
        return value

    clean = nh3.clean(
        _markdown().render(markdown),
        tags=set(ALLOWED_TAGS),
        attributes={"*": set(ALLOWED_ATTRIBUTES)},
        attribute_filter=keep,
        url_schemes=set(_URL_SCHEMES),
        link_rel="noopener noreferrer nofollow",
    )
    # Only after cleaning: the data: URIs are ours, never the model's.
    return _IMG_CROP.sub(
        lambda m: f"{m.group(1)}data:image/png;base64,{crops[int(m.group(2))]}{m.group(3)}", clean
    )


def _crops(result: PageResult, page_image: Image.Image | None) -> Sequence[str]:
    drawn: Sequence[str] | None = result.drawn.get("crops")
    if drawn is not None:
        return drawn
    if page_image is None or result.parsed is None or not result.parsed.crop_boxes_px:
        return ()
    return [png_base64(crop) for crop in grounding.crops(page_image, result.parsed)]


def html_document(
    results: Sequence[PageResult], *, title: str = "OCR", context: FileContext | None = None
) -> str:
    """The pages as one standalone HTML document, a ``<section>`` each."""
    from dsocr import __version__

    sections: list[str] = []
    for result in results:
        number = result.page
        if result.parsed is None:
            message = result.error.message if result.error is not None else "no output"
            body = f'<p class="failed">Page {number} failed: {html.escape(message)}</p>'
        else:
            page_image = None
            if "crops" not in result.drawn and context is not None and context.page_image is not None:
                page_image = context.page_image(number) if result.parsed.crop_boxes_px else None
            body = page_html(result.parsed.markdown, _crops(result, page_image))
        sections.append(f'<section class="page" id="page-{number}" data-page="{number}">\n{body}\n</section>')
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        '<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        f'<meta name="generator" content="dsocr {__version__}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<style>\n{_STYLE}\n</style>\n"
        "</head>\n<body>\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )


def _page_field(result: PageResult, context: RenderContext) -> str | None:
    if result.parsed is None:
        return None
    return page_html(result.parsed.markdown, _crops(result, None))


def _document_field(results: Sequence[PageResult]) -> str:
    return html_document(results)


def _file(results: Sequence[PageResult], context: FileContext) -> bytes:
    return html_document(results, title=context.source, context=context).encode("utf-8")


OUTPUT = Output(
    name="html",
    description="Sanitised HTML: each page's markdown rendered, tables as tables, figure crops inline.",
    page=_page_field,
    document=_document_field,
    file=_file,
    suffix=".html",
    media_type="text/html; charset=utf-8",
    uses=("crops",),
)
