"""Output folder names come from input file names, which can be anything: they must stay inside
--out, fit the file system, never collide and never change between runs."""

from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path

from batch_support import run_dsocr_batch, summary, text_page

from dsocr.batch import Manifest

# Files dsocr itself keeps at the top of OUT; everything else there must be a document folder.
RUN_FILES = {
    "manifest.sqlite",
    "manifest.sqlite-wal",
    "manifest.sqlite-shm",
    "summary.json",
    ".dsocr-batch.lock",
}
WINDOWS_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(10)),
    *(f"LPT{i}" for i in range(10)),
}


def page(path: Path, label: str) -> Path:
    text_page(label).save(path, format="PNG")
    return path


def document_folders(out: Path) -> list[Path]:
    """The document folders of OUT, checked to be the only other thing there."""
    entries = {entry.name: entry for entry in out.iterdir()}
    others = [entry for name, entry in entries.items() if name not in RUN_FILES]
    assert all(entry.is_dir() and not entry.is_symlink() for entry in others), sorted(entries)
    for folder in others:
        assert (folder / f"{folder.name}.md").is_file(), folder
        assert (folder / "pages" / "1.json").is_file(), folder
    return sorted(others)


def assert_portable(name: str) -> None:
    assert name not in ("", ".", "..")
    assert len(name.encode("utf-8")) <= 200, name
    assert not any(unicodedata.category(char).startswith("C") for char in name), repr(name)
    assert not name.startswith(("-", ".")) and not name.endswith((".", " ")), name
    assert not set(name) & set('/\\:*?"<>|'), name
    assert name.split(".")[0].upper() not in WINDOWS_RESERVED, name


def test_dot_stems_stay_inside_out_each_in_its_own_folder(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    dotdot = page(inputs / "...png", "stem is dot-dot")  # stem ".."
    dot = page(inputs / "..png", "stem is dot")  # stem "."
    base = tmp_path / "base"
    out = base / "out"
    result = run_dsocr_batch(str(dotdot), str(dot), "--out", str(out), "--engine", "fake")
    assert result.returncode == 0, result.stderr
    assert [entry.name for entry in base.iterdir()] == ["out"]  # nothing beside --out
    folders = document_folders(out)
    assert len(folders) == 2
    for folder in folders:
        assert_portable(folder.name)
    assert summary(out)["pages_done"] == 2


def test_overlong_names_are_shortened_by_bytes_kept_distinct_and_stable(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    page(inputs / ("a" * 247 + ".png"), "251 characters")
    page(inputs / ("b" * 240 + "1.png"), "long one")
    page(inputs / ("b" * 240 + "2.png"), "long two")  # the same first 240 bytes
    page(inputs / ("é" * 125 + ".png"), "250 bytes of UTF-8")
    out = tmp_path / "out"
    first = run_dsocr_batch(str(inputs), "--out", str(out), "--engine", "fake")
    assert first.returncode == 0, first.stderr
    names = [folder.name for folder in document_folders(out)]
    assert len(names) == 4
    for name in names:
        assert_portable(name)
    assert any(name.startswith("é" * 50) for name in names)  # cut between characters, not inside one

    again = run_dsocr_batch(str(inputs), "--out", str(out), "--engine", "fake")
    assert again.returncode == 0, again.stderr
    assert [folder.name for folder in document_folders(out)] == names
    assert (summary(out)["pages_done"], summary(out)["pages_skipped"]) == (0, 4)

    fresh = tmp_path / "fresh"  # no manifest: the same inputs still give the same names
    assert run_dsocr_batch(str(inputs), "--out", str(fresh), "--engine", "fake").returncode == 0
    assert [folder.name for folder in document_folders(fresh)] == names


def test_hostile_and_reserved_names_get_portable_distinct_folders(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    files = [
        page(inputs / "bad\nname\x1b[31m.png", "control characters"),
        page(inputs / "-rf.png", "leading dash"),
        page(inputs / "CON.png", "windows device"),
        page(inputs / "nul.tar.png", "windows device with a dot"),
        page(inputs / ".hidden.png", "hidden"),
        page(inputs / "summary.json.png", "run summary"),
        page(inputs / "manifest.sqlite.png", "manifest"),
        page(inputs / "a:b.png", "colon"),
        page(inputs / "a_b.png", "maps to the same name as a:b"),
        page(inputs / "Report.png", "upper case"),
        page(inputs / "report.png", "lower case: one folder on macOS and Windows"),
        page(inputs / "trailing. .png", "trailing dot and space"),
    ]
    out = tmp_path / "out"
    result = run_dsocr_batch(*map(str, files), "--out", str(out), "--engine", "fake")
    assert result.returncode == 0, result.stderr
    report = summary(out)
    assert report["pages_done"] == len(files)
    names = [folder.name for folder in document_folders(out)]
    assert len(names) == len(files)
    assert len({unicodedata.normalize("NFC", name).casefold() for name in names}) == len(files)
    for name in names:
        assert_portable(name)


def test_a_file_name_that_is_not_utf8_is_processed(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    page(Path(os.fsdecode(bytes(inputs) + b"/scan\xff\xfe.png")), "latin-1 name")
    out = tmp_path / "out"
    result = run_dsocr_batch(str(inputs), "--out", str(out), "--engine", "fake")
    assert result.returncode == 0, result.stderr
    [folder] = document_folders(out)
    assert_portable(folder.name)
    folder.name.encode("utf-8")  # a real UTF-8 name, no surrogate escapes


def test_an_unsafe_name_kept_by_an_older_manifest_is_not_reused(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = page(inputs / "...png", "from an older run")
    base = tmp_path / "base"
    out = base / "out"
    out.mkdir(parents=True)
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    with Manifest(out / "manifest.sqlite") as manifest:
        manifest.register_document(
            doc_key=f"{sha}:older",
            sha256=sha,
            settings_key="older",
            path=str(image),
            out_name="..",
            pages=[1],
        )
    result = run_dsocr_batch(str(image), "--out", str(out), "--engine", "fake")
    assert result.returncode == 0, result.stderr
    assert [entry.name for entry in base.iterdir()] == ["out"]
    [folder] = document_folders(out)
    assert_portable(folder.name)
