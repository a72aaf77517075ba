"""Images come out upright, RGB, transparency on white; hostile or broken ones give typed errors."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from inputs_support import png_bytes, text_page
from PIL import Image

from dsocr.errors import InputTooLarge, UndecodableInput, UnsupportedMediaType
from dsocr.inputs import open_document
from dsocr.inputs.images import decode_image, image_header_size
from dsocr.settings import LimitSettings


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size in its IHDR but carries (almost) no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b""))
        + _chunk(b"IEND", b"")
    )


def _zero_png_bomb(width: int, height: int) -> bytes:
    """A real, fully valid 1-bit PNG of zeros: tiny compressed, width×height pixels decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * 1000) for _ in range(height // 1000)]
    parts.append(compressor.compress(row * (height % 1000)))
    parts.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")
    )


def test_png_header_claiming_20000_by_20000_is_refused_from_the_header(limits: LimitSettings) -> None:
    data = _png_header_only(20_000, 20_000)
    assert image_header_size(data) == (20_000, 20_000)
    with pytest.raises(InputTooLarge) as info:
        open_document(data, limits=limits, field="image_base64")
    assert "20000×20000" in info.value.message
    assert info.value.field == "image_base64"
    assert info.value.code == "input_too_large"


def test_compressed_all_zero_png_bomb_is_refused_before_decoding(limits: LimitSettings) -> None:
    data = _zero_png_bomb(20_000, 20_000)
    assert len(data) < 200_000  # 400 MP in a few tens of kB: a real bomb
    with pytest.raises(InputTooLarge, match="400,000,000 pixels"):
        decode_image(data, max_pixels=limits.max_image_pixels)


def test_image_between_our_cap_and_pillows_warning_threshold_is_refused() -> None:
    # 50 MP is under Pillow's 89 MP warning; our configured cap (10 MP here) still applies.
    with pytest.raises(InputTooLarge, match="MAX_IMAGE_PIXELS"):
        decode_image(_png_header_only(10_000, 5_000), max_pixels=10_000_000)


def test_image_just_under_the_cap_decodes() -> None:
    image = decode_image(png_bytes(text_page((100, 50))), max_pixels=5_000)
    assert image.size == (100, 50)


def test_truncated_jpeg_is_undecodable_when_its_page_is_decoded(limits: LimitSettings) -> None:
    # Opening reads the header only (a server admits the request by its size first); the
    # damage shows when the pixels are decoded.
    data = _encode(text_page((400, 300)), "JPEG", quality=90)
    with open_document(data[: len(data) // 2], limits=limits, field="file") as doc:
        assert doc.page_sizes == ((400, 300),)
        with pytest.raises(UndecodableInput) as info:
            doc.page_image(0)
    assert info.value.field == "file"
    assert info.value.code == "undecodable_input"


def test_corrupt_png_is_undecodable_when_its_page_is_decoded(limits: LimitSettings) -> None:
    data = bytearray(png_bytes(text_page()))
    data[60:80] = bytes(20)  # smash the IDAT stream
    with open_document(bytes(data), limits=limits) as doc, pytest.raises(UndecodableInput):
        list(doc.iter_pages())


@pytest.mark.parametrize(
    "data",
    [
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"hello world",
        b"\x00\x00\x01\x00" + bytes(40),
        b"PK\x03\x04zip",
    ],
    ids=["svg", "text", "ico", "zip"],
)
def test_formats_outside_the_allow_list_are_unsupported(data: bytes, limits: LimitSettings) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        open_document(data, limits=limits)
    assert info.value.code == "unsupported_media_type"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF"])
def test_every_allowed_format_decodes_to_rgb_at_full_size(fmt: str, limits: LimitSettings) -> None:
    page = text_page((320, 240))
    with open_document(_encode(page, fmt), limits=limits) as doc:
        (decoded,) = list(doc.iter_pages())
    assert doc.kind == "image"
    assert doc.media_type == f"image/{fmt.lower()}"
    assert decoded.image.mode == "RGB"
    assert decoded.size == (320, 240)
    # The black bar stays in the top-left corner, the far corner stays white.
    assert max(decoded.image.getpixel((5, 5))) < 60  # type: ignore[arg-type]
    assert min(decoded.image.getpixel((315, 235))) > 200  # type: ignore[arg-type]


def _jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(image, "JPEG", quality=95, exif=exif.tobytes())


def test_exif_orientation_6_is_rotated_upright(limits: LimitSettings) -> None:
    # A camera held sideways stores the picture rotated 90° anticlockwise with orientation 6.
    upright = text_page((300, 200))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    with open_document(_jpeg_with_orientation(stored, 6), limits=limits) as doc:
        assert doc.page_sizes == ((300, 200),)  # upright, from the header alone
        (page,) = list(doc.iter_pages())
    assert page.size == (300, 200)
    assert max(page.image.getpixel((5, 5))) < 60  # type: ignore[arg-type]
    assert min(page.image.getpixel((295, 195))) > 200  # type: ignore[arg-type]


def test_exif_orientation_3_is_turned_180(limits: LimitSettings) -> None:
    upright = text_page((300, 200))
    stored = upright.transpose(Image.Transpose.ROTATE_180)
    with open_document(_jpeg_with_orientation(stored, 3), limits=limits) as doc:
        (page,) = list(doc.iter_pages())
    assert page.size == (300, 200)
    assert max(page.image.getpixel((5, 5))) < 60  # type: ignore[arg-type]
    assert min(page.image.getpixel((295, 195))) > 200  # type: ignore[arg-type]


def test_transparent_pixels_become_white_not_black(limits: LimitSettings) -> None:
    image = Image.new("RGBA", (50, 40), (0, 0, 0, 0))  # fully transparent *black*
    image.paste((200, 0, 0, 255), (0, 0, 10, 10))
    image.paste((0, 0, 255, 128), (20, 20, 30, 30))  # half-transparent blue
    decoded = decode_image(png_bytes(image), max_pixels=limits.max_image_pixels)
    assert decoded.mode == "RGB"
    assert decoded.getpixel((45, 35)) == (255, 255, 255)
    assert decoded.getpixel((5, 5)) == (200, 0, 0)
    red, green, blue = decoded.getpixel((25, 25))  # type: ignore[misc]
    assert 120 <= red <= 135 and 120 <= green <= 135 and blue == 255


def test_palette_png_with_transparent_index_becomes_white(limits: LimitSettings) -> None:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 5, 5))
    data = _encode(image, "PNG", transparency=0)
    decoded = decode_image(data, max_pixels=limits.max_image_pixels)
    assert decoded.getpixel((15, 15)) == (255, 255, 255)
    assert decoded.getpixel((2, 2)) == (255, 0, 0)


def test_gif_yields_only_its_first_frame(limits: LimitSettings) -> None:
    first = Image.new("RGB", (40, 30), (255, 0, 0))
    second = Image.new("RGB", (40, 30), (0, 0, 255))
    data = _encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    with open_document(data, limits=limits) as doc:
        pages = list(doc.iter_pages())
    assert len(pages) == 1 and doc.page_count == 1
    assert pages[0].image.getpixel((10, 10)) == (255, 0, 0)


def test_sixteen_bit_greyscale_keeps_its_tones(limits: LimitSettings) -> None:
    # Left half 40000/65535 (~61 % grey), right half 0; a plain convert would clip it to white.
    row = struct.pack("<10H", *([40_000] * 5 + [0] * 5))
    image = Image.frombytes("I;16", (10, 10), row * 10)
    decoded = decode_image(png_bytes(image), max_pixels=limits.max_image_pixels)
    assert decoded.getpixel((2, 2)) == (155, 155, 155)
    assert decoded.getpixel((8, 8)) == (0, 0, 0)


def test_cmyk_jpeg_becomes_rgb(limits: LimitSettings) -> None:
    data = _encode(Image.new("CMYK", (30, 20), (0, 0, 0, 0)), "JPEG")
    decoded = decode_image(data, max_pixels=limits.max_image_pixels)
    assert decoded.mode == "RGB"
    assert min(decoded.getpixel((5, 5))) > 240  # type: ignore[arg-type]


def test_page_range_on_an_image_accepts_page_one_only(limits: LimitSettings) -> None:
    data = png_bytes(text_page())
    with open_document(data, limits=limits, pages="1") as doc:
        assert doc.page_indices == (0,)
    with pytest.raises(Exception, match="past the end"):
        open_document(data, limits=limits, pages="2")
