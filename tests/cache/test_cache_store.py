"""``PageCache`` itself: the LRU bound, several users of one file, threads, and a cache that cannot work."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from cache_support import page_image

from dsocr.cache import CACHE_FILE, PageCache, page_key, pixel_hash
from dsocr.engine.base import EngineOutput
from dsocr.settings import EngineSettings


def output(text: str, finish: str = "stop") -> EngineOutput:
    return EngineOutput(
        request_id="r",
        text=text,
        finish_reason=finish,  # type: ignore[arg-type]
        prompt_tokens=10,
        vision_tokens=8,
        completion_tokens=len(text.split()),
        repetition_score=0.1,
    )


def open_cache(directory: Path, max_bytes: int = 1024**3) -> PageCache:
    return PageCache(directory, engine=EngineSettings(), max_bytes=max_bytes)


def entry_size(cache: PageCache, key: str, text: str) -> int:
    probe = open_cache(cache.path.parent / "probe")
    try:
        probe.put(key, "", output(text))
        return probe.stored_bytes()
    finally:
        probe.close()


def test_a_stored_output_comes_back_as_it_was(tmp_path: Path) -> None:
    stored = output("# Title\n<|ref|>text<|/ref|>", finish="length")
    cache = open_cache(tmp_path)
    try:
        cache.put("k", "", stored)
        got = cache.get("k")
    finally:
        cache.close()
    # Everything but the ids and timings of the run that produced it.
    assert got == replace(stored, request_id="")


def test_the_least_recently_used_entry_goes_first_and_a_read_counts_as_use(tmp_path: Path) -> None:
    text = "x" * 500
    cache = open_cache(tmp_path / "main")
    size = entry_size(cache, "a", text)
    cache.max_bytes = int(size * 2.5)  # room for two entries
    try:
        cache.put("a", "", output(text))
        cache.put("b", "", output(text))
        assert cache.get("a") is not None  # a is now more recent than b
        cache.put("c", "", output(text))
        kept = {key: cache.get(key) is not None for key in "abc"}
        assert cache.stored_bytes() <= cache.max_bytes
    finally:
        cache.close()
    assert kept == {"a": True, "b": False, "c": True}


def test_an_entry_larger_than_the_whole_cache_is_not_stored(tmp_path: Path) -> None:
    cache = open_cache(tmp_path, max_bytes=400)
    try:
        cache.put("small", "", output("ok"))
        cache.put("big", "", output("y" * 1000))
        assert cache.get("big") is None
        assert cache.get("small") is not None, "a page too big to keep does not push the others out"
    finally:
        cache.close()


def test_processes_sharing_one_folder_see_each_others_pages_and_one_bound(tmp_path: Path) -> None:
    first, second = open_cache(tmp_path), open_cache(tmp_path)
    try:
        first.put("a", "", output("from the first"))
        second.put("b", "", output("from the second"))
        assert first.get("b") is not None and second.get("a") is not None
        assert first.stored_bytes() == second.stored_bytes() > 0
    finally:
        first.close()
        second.close()


def test_threads_can_use_one_cache_at_once(tmp_path: Path) -> None:
    cache = open_cache(tmp_path)

    def work(n: int) -> bool:
        cache.put(f"k{n}", "", output(f"page {n}"))
        got = cache.get(f"k{n}")
        return got is not None and got.text == f"page {n}"

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(work, range(200)))
    finally:
        cache.close()
    assert all(results)


def test_a_cache_that_cannot_be_opened_misses_and_stores_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    cache = open_cache(blocker / "dsocr")
    cache.put("k", "", output("text"))
    assert not cache.available
    assert cache.get("k") is None and cache.stored_bytes() == 0
    cache.close()


def test_a_cache_damaged_while_open_misses_instead_of_failing(tmp_path: Path) -> None:
    cache = open_cache(tmp_path)
    try:
        cache.put("k", "", output("text"))
        cache._db.execute("DROP TABLE pages")  # type: ignore[union-attr]
        assert cache.get("k") is None
        cache.put("k", "", output("text"))  # no exception either
    finally:
        cache.close()
    assert (tmp_path / CACHE_FILE).exists()


def test_the_key_is_the_pixels_not_the_picture_object() -> None:
    one, same = page_image("alpha"), page_image("alpha")
    other_text, other_size = page_image("alphb"), page_image("alpha", (401, 300))
    assert pixel_hash(one) == pixel_hash(same)
    assert len({pixel_hash(image) for image in (one, other_text, other_size, one.convert("L"))}) == 4
    pixels = pixel_hash(one)
    assert page_key("f1", "", pixels) != page_key("f2", "", pixels)
    assert page_key("f1", "tenant-a", pixels) != page_key("f1", "tenant-b", pixels)


def test_a_tall_page_is_hashed_band_by_band_as_a_whole() -> None:
    # Bands of rows are hashed one after the other: a change in the last band still changes the key.
    tall = page_image("top", (50, 1000))
    changed = tall.copy()
    changed.putpixel((49, 999), (0, 0, 0))
    assert pixel_hash(tall) != pixel_hash(changed)


def test_a_cache_folder_it_creates_is_its_owners_only(tmp_path: Path) -> None:
    # The stored pages hold the documents' text.
    cache = open_cache(tmp_path / "new" / "dsocr")
    cache.close()
    assert (tmp_path / "new" / "dsocr").stat().st_mode & 0o077 == 0


def test_text_that_cannot_be_stored_is_skipped_without_failing(tmp_path: Path) -> None:
    cache = open_cache(tmp_path)
    try:
        cache.put("k", "", output("broken \udc80 text"))
        assert cache.get("k") is None
    finally:
        cache.close()
