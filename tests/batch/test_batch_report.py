"""What `dsocr batch` tells the user at the end: which files failed and why, which were duplicates."""

from __future__ import annotations

import shutil
from pathlib import Path

from batch_support import run_dsocr_batch, summary, text_page


def test_failed_files_are_named_on_stderr_and_in_the_summary(mixed_folder: Path, tmp_path: Path) -> None:
    (mixed_folder / "junk.pdf").write_bytes(b"%PDF-1.7\n this is not really a pdf")
    out = tmp_path / "out"
    result = run_dsocr_batch(str(mixed_folder), "--out", str(out), "--engine", "fake", "--quiet")
    assert result.returncode == 4, result.stderr
    failed = summary(out)["failed_files"]
    broken, junk = str(mixed_folder / "broken.png"), str(mixed_folder / "junk.pdf")
    assert [(f["path"], f["output"], f["page"], f["reason"]) for f in failed] == [
        (broken, "broken", 1, "undecodable_input"),  # opened, but its page could not be decoded
        (junk, "junk", None, "undecodable_input"),  # could not be opened at all
    ]
    assert all(f["message"] for f in failed)
    lines = result.stderr.splitlines()
    assert any(broken in line and "page 1" in line and "undecodable_input" in line for line in lines)
    assert any(junk in line and "undecodable_input" in line for line in lines)


def test_many_failures_list_the_first_ten_on_stderr_and_all_in_the_summary(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    text_page("good").save(inputs / "good.png")
    whole = (inputs / "good.png").read_bytes()
    for n in range(13):
        (inputs / f"broken{n:02}.png").write_bytes(whole[: 200 + n])  # each truncated differently
    out = tmp_path / "out"
    result = run_dsocr_batch(str(inputs), "--out", str(out), "--engine", "fake")
    assert result.returncode == 4, result.stderr
    failed = summary(out)["failed_files"]
    assert [Path(f["path"]).name for f in failed] == [f"broken{n:02}.png" for n in range(13)]
    named = [n for n in range(13) if f"broken{n:02}.png" in result.stderr]
    assert named == list(range(10))
    assert "and 3 more" in result.stderr and str(out / "summary.json") in result.stderr


def test_duplicates_are_listed_with_the_output_they_share(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    text_page("same bytes").save(inputs / "a.png")
    shutil.copyfile(inputs / "a.png", inputs / "b.png")
    text_page("other").save(inputs / "c.png")
    out = tmp_path / "out"
    result = run_dsocr_batch(str(inputs), "--out", str(out), "--engine", "fake")
    assert result.returncode == 0, result.stderr
    report = summary(out)
    assert report["duplicates"] == 1
    assert report["duplicate_files"] == [
        {"path": str(inputs / "b.png"), "same_as": str(inputs / "a.png"), "output": "a"}
    ]
    assert sorted(path.name for path in out.iterdir() if path.is_dir()) == ["a", "c"]
    [line] = [line for line in result.stderr.splitlines() if str(inputs / "b.png") in line]
    assert str(inputs / "a.png") in line and str(out / "a") in line
