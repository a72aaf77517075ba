"""Fixtures for batch tests: a mixed input folder with a corrupt file."""

from __future__ import annotations

from pathlib import Path

import pytest
from batch_support import text_page, write_pdf


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """Two images (one in a sub-folder), two PDFs (3 and 2 pages), one truncated PNG, one text file."""
    folder = tmp_path / "archive"
    (folder / "scans").mkdir(parents=True)
    text_page("alpha").save(folder / "alpha.png")
    text_page("beta", (500, 700)).save(folder / "scans" / "beta.jpg", quality=90)
    write_pdf(folder / "report.pdf", 3, "report")
    write_pdf(folder / "scans" / "letter.pdf", 2, "letter")
    whole = (folder / "alpha.png").read_bytes()
    (folder / "broken.png").write_bytes(whole[: len(whole) // 3])  # truncated: header fine, pixels not
    (folder / "notes.txt").write_text("not an input: ignored when walking a folder")
    return folder
