"""`dsocr batch --ray` fails fast and plainly when the Ray cluster cannot be used."""

from __future__ import annotations

from pathlib import Path

import pytest
from batch_support import run_dsocr_batch, text_page

pytest.importorskip("ray", reason="the Ray path needs the ray extra (pip install 'dsocr[ray]')")


@pytest.fixture
def one_page(tmp_path: Path) -> Path:
    text_page("needs a cluster").save(tmp_path / "page.png")
    return tmp_path / "page.png"


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_unreachable_cluster_is_an_engine_failure_with_one_line(one_page: Path, tmp_path: Path) -> None:
    # Nothing listens on port 1; Ray itself would retry for many minutes.
    result = run_dsocr_batch(
        str(one_page),
        "--out",
        str(tmp_path / "out"),
        "--engine",
        "fake",
        "--ray-address",
        "127.0.0.1:1",
        timeout=90,
    )
    assert result.returncode == 3, result.stderr
    [line] = error_lines(result.stderr)
    assert "Ray cluster" in line and ":1" in line and "(ray_address)" in line


def test_malformed_cluster_address_is_a_usage_error(one_page: Path, tmp_path: Path) -> None:
    result = run_dsocr_batch(
        str(one_page),
        "--out",
        str(tmp_path / "out"),
        "--engine",
        "fake",
        "--ray-address",
        "not an address",
        timeout=90,
    )
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result.stderr)
    assert "not an address" in line and "(ray_address)" in line
