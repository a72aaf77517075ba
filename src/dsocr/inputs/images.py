"""Decode an image into the RGB picture the model sees: size check first, then EXIF, alpha, colour.

The pixel limit is ours (``LimitSettings.max_image_pixels``) and is checked from the header, before
any pixel is decoded. Pillow's own bomb check only warns at 89 MP, so we never rely on it: we build
the format's image class directly (which reads only the header) instead of ``Image.open``.

:func:`read_image_header` reads size and orientation without decoding (a server admits a request
by its pixels first); :func:`decode_pixels` decodes later; :func:`decode_image` does both.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from PIL import (
    BmpImagePlugin,
    ExifTags,
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from dsocr.errors import InputTooLarge, UndecodableInput, UnsupportedMediaType
from dsocr.inputs.formats import Format, sniff_format

__all__ = [
    "IMAGE_FORMATS",
    "ImageHeader",
    "decode_image",
    "decode_pixels",
    "image_header_size",
    "normalise_image",
    "read_image_header",
]

_Opener = Callable[[IO[bytes]], ImageFile.ImageFile]

# Allowed image formats and the class that reads each one's header. GIF and TIFF keep only their
# first frame: we never seek.
_OPENERS: dict[Format, _Opener] = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
    "TIFF": TiffImagePlugin.TiffImageFile,
    "BMP": BmpImagePlugin.BmpImageFile,
    "GIF": GifImagePlugin.GifImageFile,
}
IMAGE_FORMATS: frozenset[Format] = frozenset(_OPENERS)

_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


@contextmanager
def _pillow_errors(field: str, what: str) -> Iterator[None]:
    """Translate Pillow's exceptions into typed dsocr errors, once, at this seam."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        # Only reachable if an operator set max_image_pixels above Pillow's own hard limit.
        raise InputTooLarge(f"{what} is too large to decode safely: {exc}", field=field) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError) as exc:
        message = f"{what} cannot be decoded (corrupt or truncated): {exc}"
        raise UndecodableInput(message, field=field) from exc


def _open_header(data: bytes, fmt: Format, field: str) -> ImageFile.ImageFile:
    with _pillow_errors(field, f"{fmt} image"):
        return _OPENERS[fmt](io.BytesIO(data))


def image_header_size(data: bytes, *, field: str = "image") -> tuple[int, int]:
    """Width and height from the image header, without decoding pixels."""
    fmt = _image_format(data, field)
    return _open_header(data, fmt, field).size


def _image_format(data: bytes, field: str) -> Format:
    fmt = sniff_format(data)
    if fmt is None or fmt not in _OPENERS:
        raise UnsupportedMediaType(
            "not an accepted image format (PNG, JPEG, WebP, TIFF, BMP or GIF)", field=field
        )
    return fmt


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What an image's header tells without decoding: format, stored size and EXIF orientation."""

    format: Format
    stored_size: tuple[int, int]
    orientation: int = 1

    @property
    def size(self) -> tuple[int, int]:
        """Width and height once upright (orientations 5-8 turn the picture a quarter)."""
        width, height = self.stored_size
        return (height, width) if self.orientation in _QUARTER_TURNS else (width, height)


def read_image_header(data: bytes, *, max_pixels: int, field: str = "image") -> ImageHeader:
    """Read the header of ``data`` and check its size, decoding no pixel.

    Raises ``UnsupportedMediaType`` (not an allowed format), ``InputTooLarge`` (over ``max_pixels``)
    or ``UndecodableInput`` (corrupt header, empty size).
    """
    fmt = _image_format(data, field)
    image = _open_header(data, fmt, field)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise UndecodableInput(f"{fmt} image declares an empty size {width}×{height}", field=field)
    if width * height > max_pixels:
        raise InputTooLarge(
            f"image is {width}×{height} = {width * height:,} pixels; limit is {max_pixels:,} "
            "(DSOCR_LIMITS__MAX_IMAGE_PIXELS)",
            field=field,
        )
    return ImageHeader(format=fmt, stored_size=(width, height), orientation=_header_orientation(image))


def decode_pixels(data: bytes, header: ImageHeader, *, field: str = "image") -> Image.Image:
    """Decode ``data`` (whose header :func:`read_image_header` checked) into the upright RGB picture."""
    image = _open_header(data, header.format, field)
    with _pillow_errors(field, f"{header.format} image"):
        image.load()
        return normalise_image(image, orientation=header.orientation)


def decode_image(data: bytes, *, max_pixels: int, field: str = "image") -> Image.Image:
    """Decode ``data`` into an RGB image, upright (EXIF applied) and with transparency on white.

    Raises ``UnsupportedMediaType`` (not an allowed format), ``InputTooLarge`` (over ``max_pixels``,
    checked from the header before decoding) or ``UndecodableInput`` (corrupt or truncated).
    """
    return decode_pixels(data, read_image_header(data, max_pixels=max_pixels, field=field), field=field)


def _header_orientation(image: ImageFile.ImageFile) -> int:
    # A PNG's eXIf chunk counts only before the pixels, as browsers read it: Pillow would decode
    # the whole image to look for one after them.
    if isinstance(image, PngImagePlugin.PngImageFile) and "exif" not in image.info:
        return 1
    return _orientation(image)


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a broken EXIF block must not lose the picture itself
        return 1
    return value if isinstance(value, int) else 1


def normalise_image(image: Image.Image, *, orientation: int | None = None) -> Image.Image:
    """Return ``image`` upright and in RGB, with any transparency composited on white.

    ``orientation`` is the EXIF value to apply (default: read from ``image``). Avoids copies: an
    upright RGB image is returned as it is.
    """
    transpose = _TRANSPOSES.get(_orientation(image) if orientation is None else orientation)
    if transpose is not None:
        image = image.transpose(transpose)
    if image.mode == "RGB":
        return image
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        # convert("RGB") would keep whatever colour lies under transparent pixels, often black.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _WHITE)
        canvas.paste(rgba, mask=rgba)
        return canvas
    if image.mode in _WIDE_GREY_MODES:
        image = _sixteen_bit_to_l(image)
    return image.convert("RGB")


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    # 16-bit grey would clip to white in a plain convert("L"): scale into 8 bits first.
    wide = image.convert("I")
    high = wide.getextrema()[1]
    if isinstance(high, (int, float)) and high <= 255:
        return wide.convert("L")
    return wide.point(lambda v: v * (1 / 257)).convert("L")
