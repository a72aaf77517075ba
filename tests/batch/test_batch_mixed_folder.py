"""`dsocr batch` over a mixed folder: every good page written, the corrupt file reported."""

from __future__ import annotations

import json
import re
from pathlib import Path

from batch_support import manifest_pages, summary, text_page
from typer.testing import CliRunner

from dsocr.batch import PAGE_SPLIT
from dsocr.cli import app

runner = CliRunner()


def run_cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["batch", *args])
    return result.exit_code, result.output


def test_mixed_folder_completes_and_reports_the_corrupt_file_with_exit_4(
    mixed_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, output = run_cli(str(mixed_folder), "--out", str(out), "--engine", "fake")
    assert code == 4, output
    report = summary(out)
    assert report["documents"] == 5  # notes.txt is not an input
    assert report["pages_total"] == 1 + 1 + 3 + 2 + 1
    assert report["pages_done"] == 7
    assert report["pages_failed"] == 1
    assert report["failures"] == {"undecodable_input": 1}
    assert "undecodable_input: 1" in output
    broken = json.loads((out / "broken" / "pages" / "1.json").read_text())
    assert broken["error"]["type"] == "undecodable_input"
    statuses = {(row["out_name"], row["page"]): row["status"] for row in manifest_pages(out)}
    assert statuses.pop(("broken", 1)) == "failed"
    assert set(statuses.values()) == {"done"}
    assert sorted(statuses) == [
        ("alpha", 1),
        ("beta", 1),
        ("letter", 1),
        ("letter", 2),
        ("report", 1),
        ("report", 2),
        ("report", 3),
    ]


def test_document_markdown_joins_pages_with_the_split_marker_and_links_resolve(
    mixed_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run_cli(str(mixed_folder), "--out", str(out), "--engine", "fake", "--overlays")
    report_md = out / "report" / "report.md"
    text = report_md.read_text()
    assert text.count(PAGE_SPLIT) == 2  # 3 pages
    links = re.findall(r"\]\(([^)]+\.png)\)", text)
    assert len(links) == 3  # the fake page has one figure per page
    for link in links:
        assert (report_md.parent / link).is_file(), link
    for page in (1, 2, 3):
        page_md = out / "report" / "pages" / f"{page}.md"
        for link in re.findall(r"\]\(([^)]+\.png)\)", page_md.read_text()):
            assert (page_md.parent / link).resolve().is_file(), link
        record = json.loads((out / "report" / "pages" / f"{page}.json").read_text())
        assert record["blocks"] and record["usage"]["completion_tokens"] > 0
        assert record["finish_reason"] == "stop"
        assert (out / "report" / record["overlay"]).is_file()
    assert "<!-- page 1 failed: undecodable_input" in (out / "broken" / "broken.md").read_text()


def test_glob_and_single_file_inputs_are_taken(mixed_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = run_cli(
        str(mixed_folder / "scans" / "*.pdf"),
        str(mixed_folder / "alpha.png"),
        "--out",
        str(out),
        "--engine",
        "fake",
    )
    assert code == 0, output
    assert sorted(path.name for path in out.iterdir() if path.is_dir()) == ["alpha", "letter"]


def test_missing_input_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    code, output = run_cli(
        str(tmp_path / "nope" / "*.pdf"), "--out", str(tmp_path / "out"), "--engine", "fake"
    )
    assert code == 2
    assert "matches no file" in output and "(inputs)" in output


def test_every_file_failing_exits_with_its_input_error_code(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "junk.pdf").write_bytes(b"%PDF-1.7\n this is not really a pdf")
    code, output = run_cli(str(folder), "--out", str(tmp_path / "out"), "--engine", "fake")
    assert code == 2, output
    assert summary(tmp_path / "out")["failures"] == {"undecodable_input": 1}


def test_same_name_in_two_folders_gets_two_output_folders(tmp_path: Path) -> None:
    for sub, word in (("a", "first"), ("b", "second")):
        (tmp_path / "in" / sub).mkdir(parents=True)
        text_page(word).save(tmp_path / "in" / sub / "page.png")
    out = tmp_path / "out"
    code, _ = run_cli(str(tmp_path / "in"), "--out", str(out), "--engine", "fake")
    assert code == 0
    names = sorted(path.name for path in out.iterdir() if path.is_dir())
    assert len(names) == 2 and names[0] == "page" and names[1].startswith("page-")
