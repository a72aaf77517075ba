"""Helpers for batch tests: real pages and PDFs drawn with Pillow; readers for the outputs."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw


def text_page(text: str, size: tuple[int, int] = (600, 800)) -> Image.Image:
    """A white page with a few lines of black text (so renders and crops have content)."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for line in range(6):
        draw.text((40, 40 + 60 * line), f"{text} line {line + 1}", fill="black")
    return image


def write_pdf(path: Path, pages: int, label: str) -> Path:
    """A real multi-page PDF (Pillow's PDF writer), one text page per page."""
    images = [text_page(f"{label} page {n + 1}") for n in range(pages)]
    images[0].save(path, format="PDF", save_all=True, append_images=images[1:], resolution=72)
    return path


def manifest_pages(out: Path) -> list[dict[str, Any]]:
    """Every page row of OUT's manifest, with its document's folder name."""
    with sqlite3.connect(out / "manifest.sqlite") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT d.out_name, p.page, p.status, p.reason, p.attempts FROM pages p "
            "JOIN documents d USING (doc_key) ORDER BY d.out_name, p.page"
        ).fetchall()
    return [dict(row) for row in rows]


def summary(out: Path) -> dict[str, Any]:
    """OUT/summary.json."""
    data: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return data


def tree(out: Path) -> dict[str, bytes]:
    """Every output file (relative path → bytes), without the manifest, lock and summary."""
    skip = {
        "manifest.sqlite",
        "manifest.sqlite-wal",
        "manifest.sqlite-shm",
        "summary.json",
        ".dsocr-batch.lock",
    }
    return {
        str(path.relative_to(out)): path.read_bytes()
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.name not in skip
    }


def run_dsocr_batch(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """`dsocr batch ARGS` as a user runs it: a subprocess, no DSOCR_* variables but ``env``'s."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DSOCR_", "RAY_ADDRESS"))}
    return subprocess.run(
        [sys.executable, "-m", "dsocr", "batch", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
