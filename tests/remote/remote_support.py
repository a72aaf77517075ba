"""Helpers for the remote tests: documents, fake-engine dsocr servers on loopback, the CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from click.testing import Result
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from dsocr.cli import app
from dsocr.engine.fake import FakeEngine
from dsocr.settings import Settings
from server_support import Server, running_server

runner = CliRunner()


def page(text: str, size: tuple[int, int] = (600, 800)) -> Image.Image:
    """A white page with a title and a framed area (so crops and overlays have content)."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((30, 30), text, fill="black")
    draw.rectangle((30, 80, size[0] - 30, size[1] // 2), outline="black", width=3)
    return image


def write_pdf(path: Path, sizes: list[tuple[int, int]], label: str) -> Path:
    """A real PDF, one page per size (Pillow's writer, 72 dpi: page points = pixels)."""
    pages = [page(f"{label} page {n + 1}", size) for n, size in enumerate(sizes)]
    pages[0].save(path, format="PDF", save_all=True, append_images=pages[1:], resolution=72)
    return path


@contextmanager
def fake_server(
    folder: Path, engine: FakeEngine | None = None, **sections: dict[str, Any]
) -> Iterator[Server]:
    """A dsocr server (uvicorn in a thread, loopback) on ``engine``, jobs kept under ``folder``."""
    jobs = {"dir": str(folder / "jobs"), **sections.pop("jobs", {})}
    settings = Settings(engine={"kind": "fake"}, jobs=jobs, **sections)
    with running_server(settings, engine or FakeEngine()) as server:
        yield server


def dsocr(*args: str, env: dict[str, str] | None = None) -> Result:
    """``dsocr ARGS`` in this process (typer's runner), with ``env`` set meanwhile."""
    return runner.invoke(app, list(args), env=env)


def dsocr_process(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``dsocr ARGS`` as users run it: a process with no ``DSOCR_*`` variable but ``env``'s."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DSOCR_")}
    return subprocess.run(
        [sys.executable, "-m", "dsocr", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_dsocr(*args: str, env: dict[str, str] | None = None, log: Path) -> subprocess.Popen[bytes]:
    """``dsocr ARGS`` started in the background (output to ``log``)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DSOCR_")}
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "dsocr", *args],
            env={**clean, **(env or {})},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def comparable(data: Any) -> Any:
    """JSON without what differs between two runs of the same pages (ids, timings)."""
    if isinstance(data, dict):
        return {k: comparable(v) for k, v in data.items() if k not in ("request_id", "timings")}
    if isinstance(data, list):
        return [comparable(item) for item in data]
    return data


def files(folder: Path, *, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path → bytes), but those named in ``skip``."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in skip
    }


# What differs between two batch runs of the same pages: the run's own bookkeeping.
BATCH_BOOKKEEPING = (
    "manifest.sqlite",
    "manifest.sqlite-wal",
    "manifest.sqlite-shm",
    "summary.json",
    ".dsocr-batch.lock",
)


def manifest_pages(out: Path) -> list[tuple[str, int, str, str | None, int]]:
    """(folder, page, status, reason, attempts) of every page in OUT's manifest."""
    with sqlite3.connect(out / "manifest.sqlite") as db:
        rows = db.execute(
            "SELECT d.out_name, p.page, p.status, p.reason, p.attempts FROM pages p "
            "JOIN documents d USING (doc_key) ORDER BY d.out_name, p.page"
        ).fetchall()
    return [(str(r[0]), int(r[1]), str(r[2]), r[3], int(r[4])) for r in rows]


def summary(out: Path) -> dict[str, Any]:
    """OUT/summary.json."""
    data: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return data


def wait_for(check: Callable[[], bool], *, timeout_s: float = 60, what: str = "the condition") -> None:
    """Poll ``check`` until it holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen in {timeout_s} s")
        time.sleep(0.05)


def jobs_of(base: str) -> list[dict[str, Any]]:
    """The jobs a server lists (no API key), or [] while it cannot be reached."""
    try:
        response = httpx.get(f"{base}/v1/jobs", timeout=5)
    except httpx.TransportError:
        return []
    data: list[dict[str, Any]] = response.json()["data"] if response.status_code == 200 else []
    return data
