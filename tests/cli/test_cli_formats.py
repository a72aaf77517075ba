"""``dsocr ocr --format pdf|hocr|alto|html`` and the format ``--out``'s suffix picks."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dsocr.cli import app

runner = CliRunner()


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "page.png"
    Image.new("RGB", (600, 800), "white").save(path)
    return path


def ocr(*args: str) -> tuple[int, bytes, str]:
    result = runner.invoke(app, ["ocr", "--engine", "fake", *args])
    return result.exit_code, result.stdout_bytes, result.stderr


@pytest.mark.parametrize(
    ("name", "start"),
    [("pdf", b"%PDF-"), ("hocr", b"<?xml"), ("alto", b"<?xml"), ("html", b"<!DOCTYPE html>")],
)
def test_format_writes_the_file_to_stdout(png: Path, name: str, start: bytes) -> None:
    code, out, err = ocr(str(png), "--format", name)
    assert code == 0, err
    assert out.startswith(start)


@pytest.mark.parametrize(
    ("suffix", "marker"),
    [
        (".hocr", b"ocr_page"),
        (".xml", b"ns-v4#"),
        (".html", b"<!DOCTYPE html>"),
        (".pdf", b"%PDF-"),
        (".txt", b"A Fake Document"),
        (".md", b"# A Fake Document"),
        (".json", b'"pages"'),
    ],
)
def test_out_suffix_picks_the_format(png: Path, tmp_path: Path, suffix: str, marker: bytes) -> None:
    target = tmp_path / f"result{suffix}"
    code, _, err = ocr(str(png), "--out", str(target), "-q")
    assert code == 0, err
    data = target.read_bytes()
    assert marker in data[:2000]
    if suffix == ".txt":
        assert not data.startswith(b"#"), "plain text, not markdown"


def test_format_wins_over_the_suffix(png: Path, tmp_path: Path) -> None:
    target = tmp_path / "result.txt"
    assert ocr(str(png), "--format", "md", "--out", str(target), "-q")[0] == 0
    assert target.read_bytes().startswith(b"# ")


def test_out_without_a_suffix_is_markdown(png: Path, tmp_path: Path) -> None:
    target = tmp_path / "result"
    assert ocr(str(png), "--out", str(target), "-q")[0] == 0
    assert target.read_bytes().startswith(b"# ")


def test_an_unknown_suffix_without_format_is_an_error(png: Path, tmp_path: Path) -> None:
    target = tmp_path / "result.docx"
    code, _, err = ocr(str(png), "--out", str(target))
    assert code == 2
    assert "'.docx'" in err and "--format" in err and ".hocr" in err
    assert not target.exists()
