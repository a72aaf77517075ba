"""PDFs that are slow to render on purpose, written byte by byte (no PDF library involved).

A Form XObject that draws the previous one twice, ``depth`` levels deep ("billion laughs"):
rendering the page draws the innermost square 2**depth times, so each level doubles pdfium's
time and memory, while the file grows by under 200 bytes. On a laptop core depth 14 takes a few
seconds, depth 20 minutes and gigabytes.
"""

from __future__ import annotations

__all__ = ["nested_xobject_pdf", "pdf_with_pages"]

_BOX = b"/MediaBox [0 0 200 200]"


def _form(body: bytes, resources: bytes = b"") -> bytes:
    return b"<< /Type /XObject /Subtype /Form /BBox [0 0 200 200] %s /Length %d >>\nstream\n%s\nendstream" % (
        resources,
        len(body),
        body,
    )


def _write(objects: list[bytes]) -> bytes:
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, obj)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def pdf_with_pages(*depths: int | None) -> bytes:
    """A PDF with one page per entry: ``None`` a plain page with a black square, N a bomb of depth N."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids: list[int] = []
    for depth in depths:
        page_number = len(objects) + 1
        kids.append(page_number)
        content_number = page_number + 1
        if depth is None:
            objects.append(b"<< /Type /Page /Parent 2 0 R %s /Contents %d 0 R >>" % (_BOX, content_number))
            square = b"0 g 50 50 100 100 re f"
            objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(square), square))
            continue
        top = content_number + 1 + depth  # the outermost form, written last
        objects.append(
            b"<< /Type /Page /Parent 2 0 R %s /Resources << /XObject << /X %d 0 R >> >> /Contents %d 0 R >>"
            % (_BOX, top, content_number)
        )
        objects.append(b"<< /Length 5 >>\nstream\n/X Do\nendstream")
        objects.append(_form(b"0 g 0 0 200 200 re f"))
        for level in range(1, depth + 1):
            inner = content_number + level  # the form one level down
            objects.append(
                _form(b"q /X Do Q q /X Do Q", b"/Resources << /XObject << /X %d 0 R >> >>" % inner)
            )
    refs = b" ".join(b"%d 0 R" % kid for kid in kids)
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (refs, len(kids))
    return _write(objects)


def nested_xobject_pdf(depth: int) -> bytes:
    """A one-page PDF bomb of ``depth`` nested forms (a few KB)."""
    return pdf_with_pages(depth)
