"""The result cache through real servers on loopback (uvicorn in a thread, the fake engine).

The fake engine counts the requests it gets (``request_count``): a page answered from the cache
never reaches it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest
from cache_support import b64, cached_settings, chat_body, metric, pdf_bytes, png_bytes, without_run_fields

from dsocr.cache import CACHE_FILE
from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings
from server_support import dsocr_serve_with_env, running_server


def post_pdf(http: httpx.Client, document: bytes, **fields: str) -> httpx.Response:
    data = {"outputs": "markdown,blocks,raw,visualization", **fields}
    return http.post("/v1/ocr", files={"file": ("doc.pdf", document, "application/pdf")}, data=data)


def flags(response: httpx.Response) -> list[bool]:
    return [page["cached"] for page in response.json()["pages"]]


def test_a_repeated_pdf_is_answered_from_the_cache_without_the_engine(tmp_path: Path) -> None:
    engine = FakeEngine()
    document = pdf_bytes("one", "two", "three")
    with (
        running_server(cached_settings(tmp_path), engine) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        first = post_pdf(http, document)
        calls = engine.request_count
        second = post_pdf(http, document)
        metrics = http.get("/metrics").text

    assert first.status_code == second.status_code == 200
    assert calls == 3 and engine.request_count == 3, "the second run never reached the engine"
    assert (first.headers["x-dsocr-cache"], second.headers["x-dsocr-cache"]) == ("miss", "hit")
    assert (flags(first), flags(second)) == ([False] * 3, [True] * 3)
    # Parsed and drawn again from the stored output: every format is the same, usage included.
    one, two = first.json(), second.json()
    assert [without_run_fields(p) for p in two["pages"]] == [without_run_fields(p) for p in one["pages"]]
    assert two["markdown"] == one["markdown"] and two["usage"] == one["usage"]
    assert all(page["visualization"] for page in two["pages"])
    assert metric(metrics, "dsocr_cache_lookups_total", result="miss") == 3
    assert metric(metrics, "dsocr_cache_lookups_total", result="hit") == 3


def test_the_same_page_inside_another_pdf_is_a_hit(tmp_path: Path) -> None:
    engine = FakeEngine()
    with (
        running_server(cached_settings(tmp_path), engine) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        post_pdf(http, pdf_bytes("one", "two"))
        other = post_pdf(http, pdf_bytes("two", "three"))
    assert other.headers["x-dsocr-cache"] == "partial"
    assert flags(other) == [True, False]
    assert engine.request_count == 3


@pytest.mark.parametrize(
    "change",
    [{"preset": "ocr"}, {"prompt": "Free OCR."}, {"mode": "small"}, {"max_tokens": 40}],
    ids=["preset", "prompt", "mode", "max_tokens"],
)
def test_a_request_that_changes_the_output_misses(tmp_path: Path, change: dict[str, Any]) -> None:
    engine = FakeEngine()
    base = {"image_base64": b64(png_bytes())}
    with (
        running_server(cached_settings(tmp_path), engine) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        first = http.post("/v1/ocr", json=base)
        changed = http.post("/v1/ocr", json={**base, **change})
        again = http.post("/v1/ocr", json={**base, **change})
    assert [r.headers["x-dsocr-cache"] for r in (first, changed, again)] == ["miss", "miss", "hit"]
    assert engine.request_count == 2
    assert without_run_fields(again.json()["pages"][0]) == without_run_fields(changed.json()["pages"][0])


def test_every_door_answers_a_page_another_door_stored(tmp_path: Path) -> None:
    engine = FakeEngine()
    image = png_bytes(size=(640, 480))
    with (
        running_server(cached_settings(tmp_path), engine) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        native = http.post("/v1/ocr", json={"image_base64": b64(image), "outputs": ["raw", "blocks"]})
        predict = http.post("/predict", json={"image_base64": b64(image)})
        chat = http.post("/v1/chat/completions", json=chat_body(image))
        chat_stream = http.post("/v1/chat/completions", json=chat_body(image, stream=True))
        events = http.post("/v1/ocr", json={"image_base64": b64(image), "stream": True})

    assert engine.request_count == 1, "only the first door reached the engine"
    page = native.json()["pages"][0]
    assert native.headers["x-dsocr-cache"] == "miss"
    assert predict.headers["x-dsocr-cache"] == chat.headers["x-dsocr-cache"] == "hit"
    assert predict.json()["raw_output"] == page["raw"]
    assert chat.json()["choices"][0]["message"]["content"] == page["raw"]
    assert chat.json()["usage"]["completion_tokens"] == page["usage"]["completion_tokens"]
    # A stream from the cache sends what a generating engine would: the text, then the blocks.
    streamed_text = "".join(
        chunk["choices"][0]["delta"].get("content", "")
        for chunk in _chat_chunks(chat_stream.text)
        if chunk["choices"]
    )
    assert streamed_text == page["raw"]
    blocks = [data for name, data in _sse(events.text) if name == "block"]
    done = [data for name, data in _sse(events.text) if name == "page.done"]
    assert [block["block"]["text"] for block in blocks] == [block["text"] for block in page["blocks"]]
    assert done[0]["cached"] is True


def test_streamed_chat_text_is_not_stored_but_is_answered_from_the_cache(tmp_path: Path) -> None:
    # A streamed page skips the retry policy: what it got is not what a plain request would get.
    engine = FakeEngine()
    image = png_bytes()
    with (
        running_server(cached_settings(tmp_path), engine) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        http.post("/v1/chat/completions", json=chat_body(image, stream=True))
        plain = http.post("/v1/chat/completions", json=chat_body(image))
        calls = engine.request_count
        streamed = http.post("/v1/chat/completions", json=chat_body(image, stream=True))
    assert plain.headers["x-dsocr-cache"] == "miss"
    assert calls == 2 and engine.request_count == 2
    text = "".join(
        c["choices"][0]["delta"].get("content", "") for c in _chat_chunks(streamed.text) if c["choices"]
    )
    assert text == plain.json()["choices"][0]["message"]["content"]


def test_failed_pages_are_not_stored_and_truncated_ones_are(tmp_path: Path) -> None:
    engine = FakeEngine()
    image = b64(png_bytes())
    failing = {"image_base64": image, "prompt": "Free OCR. [fake:fail]"}
    looping = {"image_base64": image, "prompt": "Free OCR. [fake:loop]", "max_tokens": 30}
    with (
        running_server(cached_settings(tmp_path), engine) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        failed = [http.post("/v1/ocr", json=failing) for _ in range(2)]
        after_failures = engine.request_count
        truncated = [http.post("/v1/ocr", json=looping) for _ in range(2)]
    assert [r.status_code for r in failed] == [500, 500] and after_failures == 2
    assert engine.request_count == 3
    first, second = (r.json()["pages"][0] for r in truncated)
    assert truncated[1].headers["x-dsocr-cache"] == "hit"
    assert first["finish_reason"] == second["finish_reason"] == "length"
    assert second["warnings"] == first["warnings"] and second["repetitive"] == first["repetitive"]


def _keyed(tmp_path: Path, **cache: Any) -> Settings:
    return Settings(
        engine={"kind": "fake"},
        server={"api_keys": ["key-a", "key-b"]},
        cache={"dir": tmp_path, **cache},
    )


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_one_api_keys_pages_are_a_miss_for_another(tmp_path: Path) -> None:
    engine = FakeEngine()
    body = {"image_base64": b64(png_bytes())}
    with (
        running_server(_keyed(tmp_path), engine) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        answers = [
            http.post("/v1/ocr", json=body, headers=_as(key)) for key in ("key-a", "key-b", "key-a", "key-b")
        ]
    assert [r.headers["x-dsocr-cache"] for r in answers] == ["miss", "miss", "hit", "hit"]
    assert engine.request_count == 2
    # The file holds an opaque id per key, never the key.
    with sqlite3.connect(tmp_path / CACHE_FILE) as db:
        scopes = {row[0] for row in db.execute("SELECT scope FROM pages")}
    assert len(scopes) == 2 and not any("key-" in scope for scope in scopes)


def test_a_shared_cache_answers_every_api_key(tmp_path: Path) -> None:
    engine = FakeEngine()
    body = {"image_base64": b64(png_bytes())}
    with (
        running_server(_keyed(tmp_path, shared=True), engine) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        first = http.post("/v1/ocr", json=body, headers=_as("key-a"))
        other = http.post("/v1/ocr", json=body, headers=_as("key-b"))
    assert (first.headers["x-dsocr-cache"], other.headers["x-dsocr-cache"]) == ("miss", "hit")
    assert engine.request_count == 1


def test_a_disabled_cache_never_answers(tmp_path: Path) -> None:
    engine = FakeEngine()
    body = {"image_base64": b64(png_bytes())}
    with (
        running_server(cached_settings(tmp_path, enabled=False), engine) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        answers = [http.post("/v1/ocr", json=body) for _ in range(2)]
        predict = http.post("/predict", json=body)
    assert engine.request_count == 3
    assert all("x-dsocr-cache" not in r.headers for r in (*answers, predict))
    assert [r.json()["pages"][0]["cached"] for r in answers] == [False, False]
    assert not (tmp_path / CACHE_FILE).exists()


def test_the_server_caches_by_default_in_the_users_cache_folder() -> None:
    # tests/conftest.py points XDG_CACHE_HOME at a fresh folder for each test.
    engine = FakeEngine()
    body = {"image_base64": b64(png_bytes())}
    with (
        running_server(Settings(engine={"kind": "fake"}), engine) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        answers = [http.post("/v1/ocr", json=body) for _ in range(2)]
    assert [r.headers["x-dsocr-cache"] for r in answers] == ["miss", "hit"]
    assert engine.request_count == 1


@pytest.mark.parametrize("enabled", ["true", "false"])
def test_dsocr_serve_follows_the_cache_variables(tmp_path: Path, enabled: str) -> None:
    folder = tmp_path / "pages"
    env = {"DSOCR_ENGINE__KIND": "fake", "DSOCR_CACHE__ENABLED": enabled, "DSOCR_CACHE__DIR": str(folder)}
    body = {"image_base64": b64(png_bytes())}
    with dsocr_serve_with_env(env, log=tmp_path / "serve.log") as (base, _):
        answers = [httpx.post(f"{base}/v1/ocr", json=body, timeout=30) for _ in range(2)]
    headers = [r.headers.get("x-dsocr-cache") for r in answers]
    if enabled == "true":
        assert headers == ["miss", "hit"] and (folder / CACHE_FILE).is_file()
    else:
        assert headers == [None, None] and not folder.exists()


def test_a_corrupt_cache_file_does_not_break_requests(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / CACHE_FILE).write_bytes(b"this is not an SQLite database\n" * 200)
    engine = FakeEngine()
    body = {"image_base64": b64(png_bytes())}
    with (
        running_server(cached_settings(tmp_path), engine) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        answers = [http.post("/v1/ocr", json=body) for _ in range(2)]
    assert [r.status_code for r in answers] == [200, 200]
    assert engine.request_count == 2  # nothing could be stored: every page runs
    assert [r.json()["pages"][0]["cached"] for r in answers] == [False, False]
    assert "cannot be opened" in caplog.text and "delete it" in caplog.text


def test_an_unreadable_entry_is_a_miss_and_is_stored_again(tmp_path: Path) -> None:
    engine = FakeEngine()
    body = {"image_base64": b64(png_bytes())}
    with (
        running_server(cached_settings(tmp_path), engine) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        stored = http.post("/v1/ocr", json=body)
        # Damage the stored value, as a crash or another version might have left it.
        with sqlite3.connect(tmp_path / CACHE_FILE) as db:
            db.execute("UPDATE pages SET value = '{\"text\": 3'")
        damaged = http.post("/v1/ocr", json=body)
        repaired = http.post("/v1/ocr", json=body)
    assert [r.status_code for r in (stored, damaged, repaired)] == [200, 200, 200]
    assert [r.headers["x-dsocr-cache"] for r in (stored, damaged, repaired)] == ["miss", "miss", "hit"]
    assert engine.request_count == 2
    assert without_run_fields(repaired.json()["pages"][0]) == without_run_fields(stored.json()["pages"][0])


def test_the_least_recently_used_pages_leave_a_full_cache(tmp_path: Path) -> None:
    images = [png_bytes(f"page {n}") for n in range(3)]

    def send(http: httpx.Client, image: bytes) -> httpx.Response:
        return http.post("/v1/ocr", json={"image_base64": b64(image)})

    # How much one page takes: the fake engine's output for these same-sized images is the same length.
    probe = tmp_path / "probe"
    with (
        running_server(cached_settings(probe), FakeEngine()) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        send(http, images[0])
    with sqlite3.connect(probe / CACHE_FILE) as db:
        (entry,) = db.execute("SELECT size FROM pages").fetchone()

    engine = FakeEngine()
    bounded = cached_settings(tmp_path / "bounded", max_bytes=int(entry * 2.5))
    with (
        running_server(bounded, engine) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        for image in images:
            send(http, image)  # the third pushes the first out
        newest = send(http, images[2])
        oldest = send(http, images[0])
    assert (newest.headers["x-dsocr-cache"], oldest.headers["x-dsocr-cache"]) == ("hit", "miss")
    assert engine.request_count == 4
    with sqlite3.connect(tmp_path / "bounded" / CACHE_FILE) as db:
        assert db.execute("SELECT SUM(size) FROM pages").fetchone()[0] <= entry * 2.5


def _sse(text: str) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    for frame in text.split("\n\n"):
        lines = frame.strip().splitlines()
        if not lines:
            continue
        name = next((line[6:].strip() for line in lines if line.startswith("event:")), "")
        data = "\n".join(line[5:].strip() for line in lines if line.startswith("data:"))
        events.append((name, json.loads(data)))
    return events


def _chat_chunks(text: str) -> list[dict[str, Any]]:
    return [data for _, data in _sse(text.replace("data: [DONE]", ""))]
