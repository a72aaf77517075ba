"""Which formats dsocr accepts, told apart by their magic bytes (never by name or declared type)."""

from __future__ import annotations

from typing import Literal

__all__ = ["ACCEPTED_MEDIA_TYPES", "Format", "media_type_of", "normalise_media_type", "sniff_format"]

Format = Literal["PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF", "PDF"]

_MEDIA_TYPES: dict[Format, str] = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "TIFF": "image/tiff",
    "BMP": "image/bmp",
    "GIF": "image/gif",
    "PDF": "application/pdf",
}

# Media types a client may declare (data: URIs, uploads, HTTP Content-Type). Generic binary types
# are accepted because object stores and browsers often send them; the magic bytes decide.
ACCEPTED_MEDIA_TYPES: frozenset[str] = frozenset(
    {
        *_MEDIA_TYPES.values(),
        "image/jpg",
        "image/pjpeg",
        "image/x-ms-bmp",
        "image/x-bmp",
        "image/tif",
        "application/x-pdf",
        "application/octet-stream",
        "binary/octet-stream",
    }
)

# PDF readers (and pdfium) accept a header within the first 1 KiB; some scanners prepend junk.
_PDF_HEADER_WINDOW = 1024


def sniff_format(data: bytes) -> Format | None:
    """The format of ``data`` from its leading bytes, or None if it is none we accept."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if data.startswith(b"BM"):
        return "BMP"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if b"%PDF-" in data[:_PDF_HEADER_WINDOW]:
        return "PDF"
    return None


def media_type_of(fmt: Format) -> str:
    """The canonical media type of an accepted format (``"PNG"`` → ``"image/png"``)."""
    return _MEDIA_TYPES[fmt]


def normalise_media_type(value: str | None) -> str | None:
    """``"Image/PNG; charset=x"`` → ``"image/png"``; empty → None."""
    if value is None:
        return None
    base = value.split(";", 1)[0].strip().lower()
    return base or None
