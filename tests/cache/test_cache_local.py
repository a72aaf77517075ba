"""The local front ends: ``dsocr ocr`` uses the cache, ``dsocr batch`` keys its manifest the same way."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
from cache_support import page_image

import dsocr.fingerprint
from dsocr.batch import BatchJob, run_batch
from dsocr.batch.runner import resolve_config
from dsocr.cache import CACHE_FILE
from dsocr.cli_ocr import OcrJob, run_ocr
from dsocr.fingerprint import fingerprint_hash, request_fingerprint
from dsocr.settings import Settings


def write_pdf(path: Path, *texts: str) -> Path:
    images = [page_image(text, (300, 400)) for text in texts]
    images[0].save(path, format="PDF", save_all=True, append_images=images[1:], resolution=72)
    return path


def files(out: Path) -> dict[str, bytes]:
    """The page and document files of a batch output folder (not its manifest, lock or summary)."""
    return {
        str(path.relative_to(out)): path.read_bytes()
        for path in sorted(out.rglob("*"))
        if path.is_file() and not path.name.startswith(("manifest.sqlite", "summary.json", ".dsocr"))
    }


def default_cache_file() -> Path:
    return Path(os.environ["XDG_CACHE_HOME"]) / "dsocr" / CACHE_FILE


def test_dsocr_ocr_answers_a_file_it_read_before_from_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = write_pdf(tmp_path / "doc.pdf", "first page", "second page")
    settings = Settings(engine={"kind": "fake"})
    printed: list[str] = []
    first = run_ocr(OcrJob(source=str(document), quiet=True), settings, write_stdout=printed.append)
    assert "result cache" not in capsys.readouterr().err
    second = run_ocr(OcrJob(source=str(document)), settings, write_stdout=printed.append)
    note = capsys.readouterr().err

    assert [r.cached for r in first.results] == [False, False]
    assert [r.cached for r in second.results] == [True, True]
    assert printed[0] == printed[1], "the same markdown"
    assert "2 of 2 page(s) came from the result cache" in note and "DSOCR_CACHE__ENABLED=false" in note
    assert default_cache_file().is_file()


def test_dsocr_ocr_without_the_cache_runs_every_page(tmp_path: Path) -> None:
    document = write_pdf(tmp_path / "doc.pdf", "only page")
    settings = Settings(engine={"kind": "fake"}, cache={"enabled": False})
    runs = [run_ocr(OcrJob(source=str(document), quiet=True), settings, write_stdout=print) for _ in range(2)]
    assert [r.cached for run in runs for r in run.results] == [None, None]
    assert not default_cache_file().exists()


def test_batch_keys_its_documents_with_the_caches_fingerprint(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_pdf(inputs / "doc.pdf", "one", "two")
    job = BatchJob(inputs=(str(inputs),), out_dir=tmp_path / "out", quiet=True)
    settings = Settings(engine={"kind": "fake"})
    run_batch(job, settings)

    request = resolve_config(job, settings).request
    shared = json.loads(json.dumps(request_fingerprint(request, engine="fake", settings=settings.engine)))
    with sqlite3.connect(job.out_dir / "manifest.sqlite") as db:
        ((key, recorded),) = db.execute("SELECT settings_hash, settings_json FROM settings").fetchall()
        doc_keys = [row[0] for row in db.execute("SELECT doc_key FROM documents")]
    settings_json = json.loads(recorded)
    # The cache's fingerprint, plus what only batch writes.
    assert {name: settings_json[name] for name in shared} == shared
    assert set(settings_json) - set(shared) == {"dpi", "outputs", "layout"}
    assert key == fingerprint_hash(settings_json) and doc_keys[0].endswith(f":{key}")
    assert not default_cache_file().exists(), "batch leaves the result cache alone unless asked"


def test_a_new_dsocr_version_redoes_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_pdf(inputs / "doc.pdf", "one", "two")
    job = BatchJob(inputs=(str(inputs),), out_dir=tmp_path / "out", quiet=True)
    settings = Settings(engine={"kind": "fake"})
    run_batch(job, settings)
    assert run_batch(job, settings).pages_skipped == 2
    monkeypatch.setattr(dsocr.fingerprint, "__version__", "99.0.0")
    upgraded = run_batch(job, settings)
    assert (upgraded.pages_skipped, upgraded.pages_done) == (0, 2)


def test_batch_with_the_cache_on_answers_pages_another_run_stored(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_pdf(inputs / "doc.pdf", "one", "two", "three")
    settings = Settings(engine={"kind": "fake"}, cache={"enabled": True, "dir": tmp_path / "cache"})
    first = run_batch(BatchJob(inputs=(str(inputs),), out_dir=tmp_path / "a", quiet=True), settings)
    # Another output folder: its manifest knows nothing, the cache does.
    second = run_batch(BatchJob(inputs=(str(inputs),), out_dir=tmp_path / "b", quiet=True), settings)
    assert (first.pages_done, first.pages_cached) == (3, 0)
    assert (second.pages_done, second.pages_cached) == (3, 3)
    assert "(3 from the result cache)" in second.describe()
    assert files(tmp_path / "a") == files(tmp_path / "b"), "the same bytes either way"
