"""Resumable, idempotent runs: finished pages are skipped, failed ones retried, a killed run loses nothing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from batch_support import manifest_pages, summary, text_page, tree, write_pdf

from dsocr.batch import PAGE_SPLIT, BatchJob, run_batch
from dsocr.settings import Settings


def fake_settings() -> Settings:
    return Settings(engine={"kind": "fake"})


def test_second_run_skips_finished_pages_and_retries_failed_ones(mixed_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = BatchJob(inputs=(str(mixed_folder),), out_dir=out, quiet=True)
    first = run_batch(job, fake_settings())
    files = tree(out)
    second = run_batch(job, fake_settings())
    assert (first.pages_done, first.pages_failed) == (7, 1)
    assert (second.pages_done, second.pages_skipped, second.pages_failed) == (0, 7, 1)
    assert tree(out) == files  # idempotent: the same bytes
    attempts = {(row["out_name"], row["page"]): row["attempts"] for row in manifest_pages(out)}
    assert attempts.pop(("broken", 1)) == 2  # failed pages are retried
    assert set(attempts.values()) == {1}  # finished pages were not sent again


def test_a_page_whose_files_were_deleted_is_done_again(mixed_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = BatchJob(inputs=(str(mixed_folder),), out_dir=out, quiet=True)
    run_batch(job, fake_settings())
    (out / "report" / "pages" / "2.json").unlink()
    again = run_batch(job, fake_settings())
    assert again.pages_done == 1
    assert (out / "report" / "pages" / "2.json").is_file()


def test_changing_an_output_setting_redoes_the_pages(mixed_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_batch(BatchJob(inputs=(str(mixed_folder),), out_dir=out, quiet=True), fake_settings())
    other_mode = run_batch(
        BatchJob(inputs=(str(mixed_folder),), out_dir=out, mode="small", quiet=True), fake_settings()
    )
    assert other_mode.pages_skipped == 0 and other_mode.pages_done == 7


def test_a_renamed_file_is_recognised_by_its_content(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    write_pdf(source / "old-name.pdf", 2, "renamed")
    out = tmp_path / "out"
    job = BatchJob(inputs=(str(source),), out_dir=out, quiet=True)
    run_batch(job, fake_settings())
    (source / "old-name.pdf").rename(source / "new-name.pdf")
    again = run_batch(job, fake_settings())
    assert (again.pages_done, again.pages_skipped) == (0, 2)


def test_killed_run_resumes_without_lost_or_duplicated_pages(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    pages = 12
    write_pdf(source / "long.pdf", pages, "long")
    text_page("single").save(source / "single.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "dsocr", "batch", str(source), "--out", str(out), "--engine", "fake"]
    command += ["--max-in-flight", "2", "--quiet"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSOCR_")}
    with subprocess.Popen(
        command,
        env={**env, "DSOCR_ENGINE__FAKE__DELAY_S": "0.4"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as slow:
        try:
            done_before_kill = _wait_for_done_pages(out, at_least=3, process=slow)
        finally:
            slow.send_signal(signal.SIGKILL)
            slow.wait()
    assert slow.returncode == -signal.SIGKILL
    assert 3 <= len(done_before_kill) < pages + 1, "the kill must land mid-run"

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    rows = manifest_pages(out)
    assert [(r["out_name"], r["page"]) for r in rows] == [("long", p) for p in range(1, pages + 1)] + [
        ("single", 1)
    ]
    assert {r["status"] for r in rows} == {"done"}
    for row in rows:
        if (row["out_name"], row["page"]) in done_before_kill:
            assert row["attempts"] == 1, row  # finished before the kill: skipped on resume
    report = summary(out)
    assert report["pages_skipped"] == len(done_before_kill)
    assert report["pages_done"] == pages + 1 - len(done_before_kill)
    page_files = sorted(int(p.stem) for p in (out / "long" / "pages").glob("*.json"))
    assert page_files == list(range(1, pages + 1))
    assert not list(out.rglob("*.tmp"))
    document = (out / "long" / "long.md").read_text()
    assert document.count(PAGE_SPLIT) == pages - 1
    assert document.count("# A Fake Document for Testing") == pages  # each page exactly once


def _wait_for_done_pages(
    out: Path, *, at_least: int, process: subprocess.Popen[bytes]
) -> set[tuple[str, int]]:
    """Poll the manifest (read-only; WAL allows it during the run) until pages are done."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        if (out / "manifest.sqlite").exists():
            try:
                with sqlite3.connect(f"file:{out / 'manifest.sqlite'}?mode=ro", uri=True) as db:
                    rows = db.execute(
                        "SELECT d.out_name, p.page FROM pages p JOIN documents d USING (doc_key) "
                        "WHERE p.status = 'done'"
                    ).fetchall()
            except sqlite3.OperationalError:
                rows = []  # schema not created yet
            if len(rows) >= at_least:
                return {(name, page) for name, page in rows}
        time.sleep(0.05)
    raise AssertionError("the run finished no page within 60 s")
