"""base64 / data: URIs are decoded strictly and size-checked first; local paths stay inside their root."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from inputs_support import png_bytes, text_page

from dsocr.engine.fake import FakeEngine
from dsocr.errors import InputTooLarge, InvalidInput, UnsupportedMediaType
from dsocr.inputs import Base64Source, BytesSource, PathSource, load_document, load_image, open_file
from dsocr.settings import FetchSettings, LimitSettings, Settings
from server_support import running_server


@pytest.fixture
def page_png() -> bytes:
    return png_bytes(text_page((120, 80)))


async def _load(source: Base64Source | BytesSource | PathSource, limits: LimitSettings) -> tuple[int, int]:
    async with await load_document(source, limits=limits, fetch=FetchSettings()) as doc:
        (page,) = [p async for p in doc.pages()]
        return page.size


async def test_plain_base64_loads(page_png: bytes, limits: LimitSettings) -> None:
    assert await _load(Base64Source(base64.b64encode(page_png).decode()), limits) == (120, 80)


async def test_line_wrapped_base64_loads(page_png: bytes, limits: LimitSettings) -> None:
    wrapped = base64.encodebytes(page_png).decode()  # 76-column lines, as the base64 tool writes
    assert "\n" in wrapped
    assert await _load(Base64Source(wrapped), limits) == (120, 80)
    # CRLF line ends, and spaces or tabs from pasting, are ignored too.
    pasted = wrapped.replace("\n", "\r\n").replace("A", " A\t")
    assert await _load(Base64Source(pasted), limits) == (120, 80)


@pytest.mark.parametrize("loader", ["load_image", "load_document"])
async def test_a_base64_upload_is_decoded_off_the_event_loop(
    loader: str, limits: LimitSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both steps take milliseconds of CPU for a page: on the event loop they would hold up every
    # other request (and the engine's output handling) for that long.
    import dsocr.inputs
    import dsocr.inputs.sources

    steps: list[tuple[str, str]] = []

    def recorded(step: str, func: Any) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            steps.append((step, threading.current_thread().name))
            return func(*args, **kwargs)

        return record

    monkeypatch.setattr(
        dsocr.inputs.sources, "decode_base64", recorded("base64", dsocr.inputs.sources.decode_base64)
    )
    monkeypatch.setattr(dsocr.inputs, "decode_image", recorded("image", dsocr.inputs.decode_image))
    # A document reads only the image's header when it opens (its pixels come with its page).
    monkeypatch.setattr(dsocr.inputs, "read_image_header", recorded("image", dsocr.inputs.read_image_header))
    page = text_page((120, 80))
    source = Base64Source(base64.b64encode(png_bytes(page)).decode())
    if loader == "load_image":
        image = await load_image(source, limits=limits, fetch=FetchSettings())
        assert image.size == page.size
    else:
        assert await _load(source, limits) == page.size
    assert [step for step, _ in steps] == ["base64", "image"]
    assert threading.main_thread().name not in {thread for _, thread in steps}


async def test_data_uri_loads(page_png: bytes, limits: LimitSettings) -> None:
    uri = "data:image/png;base64," + base64.b64encode(page_png).decode()
    assert await _load(Base64Source(uri), limits) == (120, 80)


async def test_base64_over_the_byte_cap_is_refused_before_decoding() -> None:
    # The payload is not even valid base64: a 413 (not a 400) proves its length was checked first.
    limits = LimitSettings(max_upload_bytes=1000)
    with pytest.raises(InputTooLarge) as info:
        await _load(Base64Source("!" * 5000), limits)
    assert info.value.code == "input_too_large"
    assert info.value.field == "image_base64"


async def test_base64_just_within_the_cap_is_accepted(page_png: bytes) -> None:
    limits = LimitSettings(max_upload_bytes=len(page_png))
    assert await _load(Base64Source(base64.b64encode(page_png).decode()), limits) == (120, 80)
    with pytest.raises(InputTooLarge):
        await _load(
            Base64Source(base64.b64encode(page_png).decode()),
            LimitSettings(max_upload_bytes=len(page_png) - 1),
        )


@pytest.mark.parametrize(
    "text",
    ["not base64 at all!", "iVBORw0KGgo", "iVBO*w0KGgo=", "aGVsbG8=aGVsbG8=", "iVBORw0KGgo===", "é" * 8],
    ids=["punctuation", "bad-padding", "bad-char", "padding-in-middle", "extra-padding", "non-ascii"],
)
async def test_bad_base64_is_invalid_input(text: str, limits: LimitSettings) -> None:
    with pytest.raises(InvalidInput) as info:
        await _load(Base64Source(text), limits)
    assert type(info.value) is InvalidInput
    assert info.value.code == "invalid_input"
    assert info.value.field == "image_base64"


@pytest.mark.parametrize("media_type", ["text/html", "image/svg+xml", "application/javascript"])
async def test_data_uri_with_a_wrong_media_type_is_unsupported(
    media_type: str, page_png: bytes, limits: LimitSettings
) -> None:
    uri = f"data:{media_type};base64," + base64.b64encode(page_png).decode()
    with pytest.raises(UnsupportedMediaType) as info:
        await _load(Base64Source(uri), limits)
    assert media_type in info.value.message
    assert info.value.code == "unsupported_media_type"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("data:image/png,rawbytes", "base64-encoded"),
        ("data:;base64,AAAA", "no media type"),
        ("data:", "malformed"),
    ],
)
async def test_malformed_data_uris_are_refused(uri: str, message: str, limits: LimitSettings) -> None:
    with pytest.raises(InvalidInput, match=message):
        await _load(Base64Source(uri), limits)


async def test_data_uri_declaring_an_image_but_holding_html_is_unsupported(limits: LimitSettings) -> None:
    uri = "data:image/png;base64," + base64.b64encode(b"<html><script>x</script></html>").decode()
    with pytest.raises(UnsupportedMediaType):
        await _load(Base64Source(uri), limits)


async def test_upload_over_the_byte_cap_is_refused(page_png: bytes) -> None:
    with pytest.raises(InputTooLarge) as info:
        await _load(BytesSource(page_png, filename="p.png"), LimitSettings(max_upload_bytes=100))
    assert info.value.field == "file"


async def test_empty_upload_is_invalid(limits: LimitSettings) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        await _load(BytesSource(b""), limits)


async def test_upload_with_a_declared_non_image_type_is_unsupported(
    page_png: bytes, limits: LimitSettings
) -> None:
    with pytest.raises(UnsupportedMediaType):
        await _load(BytesSource(page_png, content_type="text/plain"), limits)


# ---------------------------------------------------------------- local paths


@pytest.fixture
def root(tmp_path: Path, page_png: bytes) -> Path:
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "sub" / "page.png").write_bytes(page_png)
    (tmp_path / "secret.png").write_bytes(page_png)
    return allowed


async def test_local_paths_are_off_by_default(root: Path, limits: LimitSettings) -> None:
    with pytest.raises(InvalidInput, match="LOCAL_PATH_ROOT") as info:
        await _load(PathSource(str(root / "sub" / "page.png")), limits)
    assert info.value.field == "path"


async def test_path_inside_the_root_loads_relative_or_absolute(root: Path) -> None:
    limits = LimitSettings(local_path_root=root)
    assert await _load(PathSource("sub/page.png"), limits) == (120, 80)
    assert await _load(PathSource(str(root / "sub" / "page.png")), limits) == (120, 80)


@pytest.mark.parametrize("path", ["../secret.png", "sub/../../secret.png", "sub/../sub/page.png"])
async def test_dot_dot_traversal_is_refused(path: str, root: Path) -> None:
    with pytest.raises(InvalidInput, match=r"'\.\.'"):
        await _load(PathSource(path), LimitSettings(local_path_root=root))


NOT_UNDER_ROOT = "path does not name a file inside the allowed root"


async def test_absolute_path_outside_the_root_is_refused(root: Path) -> None:
    with pytest.raises(InvalidInput, match=NOT_UNDER_ROOT):
        await _load(PathSource(str(root.parent / "secret.png")), LimitSettings(local_path_root=root))


async def test_symlink_escaping_the_root_is_refused(root: Path) -> None:
    (root / "escape.png").symlink_to(root.parent / "secret.png")
    (root / "escape_dir").symlink_to(root.parent)
    limits = LimitSettings(local_path_root=root)
    with pytest.raises(InvalidInput, match=NOT_UNDER_ROOT):
        await _load(PathSource("escape.png"), limits)
    with pytest.raises(InvalidInput, match=NOT_UNDER_ROOT):
        await _load(PathSource("escape_dir/secret.png"), limits)


def test_a_client_cannot_tell_missing_paths_from_paths_outside_the_root(root: Path) -> None:
    # Otherwise the answer would say which absolute paths exist on the server.
    (root / "to_secret.png").symlink_to(root.parent / "secret.png")
    (root / "to_nothing.png").symlink_to(root.parent / "nothing.png")
    settings = Settings(engine={"kind": "fake"}, limits={"local_path_root": str(root)})
    probes = [
        str(root.parent / "secret.png"),  # exists, outside
        str(root.parent / "nothing.png"),  # missing, outside
        "/etc/passwd",
        "/no/such/dir/file.png",
        str(root.parent),  # a directory outside
        "sub/nothing.png",  # missing, inside
        "to_secret.png",  # a link to an existing file outside
        "to_nothing.png",  # a link to nothing outside
    ]
    with (
        running_server(settings, FakeEngine()) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        answers = [client.post("/v1/ocr", json={"path": path}) for path in probes]
        # The root itself still works.
        assert client.post("/v1/ocr", json={"path": "sub/page.png"}).status_code == 200
    errors = [answer.json()["error"] for answer in answers]
    assert {answer.status_code for answer in answers} == {400}
    assert {(e["code"], e["field"], e["message"]) for e in errors} == {
        ("invalid_input", "path", f"{NOT_UNDER_ROOT} (DSOCR_LIMITS__LOCAL_PATH_ROOT)")
    }


async def test_symlink_staying_inside_the_root_is_followed(root: Path) -> None:
    (root / "alias.png").symlink_to(root / "sub" / "page.png")
    assert await _load(PathSource("alias.png"), LimitSettings(local_path_root=root)) == (120, 80)


async def test_missing_file_directory_and_fifo_are_refused(root: Path) -> None:
    limits = LimitSettings(local_path_root=root)
    with pytest.raises(InvalidInput, match=NOT_UNDER_ROOT):
        await _load(PathSource("sub/nope.png"), limits)
    with pytest.raises(InvalidInput, match="not a regular file"):
        await _load(PathSource("sub"), limits)
    os.mkfifo(root / "pipe")
    with pytest.raises(InvalidInput, match="not a regular file"):
        await _load(PathSource("pipe"), limits)


async def test_local_file_over_the_byte_cap_is_refused(root: Path, page_png: bytes) -> None:
    limits = LimitSettings(local_path_root=root, max_upload_bytes=len(page_png) - 1)
    with pytest.raises(InputTooLarge):
        await _load(PathSource("sub/page.png"), limits)


def test_cli_open_file_reads_any_path_the_user_names(root: Path, limits: LimitSettings) -> None:
    with open_file(root.parent / "secret.png", limits=limits) as doc:
        assert doc.name == "secret.png"
        assert [p.size for p in doc.iter_pages()] == [(120, 80)]
    with pytest.raises(InvalidInput, match="cannot open"):
        open_file(root / "missing.pdf", limits=limits)
