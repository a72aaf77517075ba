"""The ``dsocr`` command as users run it (a process): settings from the environment, ``--version``,
stdin input and crop links."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

import dsocr

# The fake engine's page title; the CPU engine reads nothing on a blank page.
FAKE_TITLE = "# A Fake Document for Testing"


def run_dsocr(
    *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m dsocr ARGS…`` with only the given ``DSOCR_*`` variables (none of the developer's)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DSOCR_")}
    completed = subprocess.run(
        [sys.executable, "-m", "dsocr", *args],
        input=stdin,
        capture_output=True,
        env={**clean, **(env or {})},
        cwd=cwd,
        timeout=120,
        check=False,
    )
    return subprocess.CompletedProcess(
        completed.args,
        completed.returncode,
        completed.stdout.decode("utf-8", errors="replace"),
        completed.stderr.decode("utf-8", errors="replace"),
    )


@pytest.fixture
def blank_png(tmp_path: Path) -> Path:
    path = tmp_path / "blank.png"
    Image.new("RGB", (300, 400), "white").save(path)
    return path


def _pdf(path: Path, pages: int) -> Path:
    images = []
    for number in range(1, pages + 1):
        image = Image.new("RGB", (420, 595), "white")
        ImageDraw.Draw(image).text((30, 30), f"Page {number}", fill="black")
        images.append(image)
    images[0].save(path, format="PDF", save_all=True, append_images=images[1:], resolution=72)
    return path


# --- settings: the environment, overridden by flags -------------------------------------------------


def test_ocr_uses_the_engine_named_in_the_environment(blank_png: Path) -> None:
    done = run_dsocr("ocr", str(blank_png), env={"DSOCR_ENGINE__KIND": "fake"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(FAKE_TITLE)


def test_an_engine_flag_overrides_the_environment(blank_png: Path) -> None:
    # Even an invalid value in the environment: the flag replaces it.
    done = run_dsocr("ocr", str(blank_png), "--engine", "fake", env={"DSOCR_ENGINE__KIND": "bogus"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(FAKE_TITLE)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DSOCR_ENGINE__KIND", "bogus"),
        ("DSOCR_LIMITS__MAX_TOKENS", "lots"),
        # List and dict settings are JSON: a parse failure is a usage error too, not a traceback.
        ("DSOCR_SERVER__API_KEYS", "[not json"),
        ("DSOCR_ENGINE__VLLM__ARGS", "enforce_eager"),
    ],
)
@pytest.mark.parametrize("command", ["ocr", "batch"])
def test_an_invalid_setting_stops_with_exit_2_naming_the_variable(
    command: str, variable: str, value: str, blank_png: Path, tmp_path: Path
) -> None:
    args = [str(blank_png)] if command == "ocr" else [str(blank_png), "--out", str(tmp_path / "out")]
    done = run_dsocr(command, *args, env={variable: value})
    assert done.returncode == 2
    assert done.stdout == ""
    assert variable in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("DSOCR_ENGINE__MAX_NUM_SEQS", "DSOCR_ENGINE__VLLM__MAX_NUM_SEQS"),
        ("DSOCR_ENGINE__FAKE_DELAY_S", "DSOCR_ENGINE__FAKE__DELAY_S"),
    ],
)
@pytest.mark.parametrize("command", ["serve", "ocr"])
def test_a_flat_engine_variable_that_moved_stops_start_up_naming_the_new_one(
    command: str, old: str, new: str, blank_png: Path
) -> None:
    args = ["--port", "0"] if command == "serve" else [str(blank_png)]
    done = run_dsocr(command, *args, "--engine", "fake", env={old: "4"})
    assert done.returncode == 2
    assert f"{old} is now {new}" in done.stderr and "Traceback" not in done.stderr


def test_a_misspelt_setting_stops_serve_naming_it() -> None:
    done = run_dsocr("serve", "--engine", "fake", "--port", "0", env={"DSOCR_SERVER__MAX_CONCURENCY": "4"})
    assert done.returncode == 2
    assert "unknown setting DSOCR_SERVER__MAX_CONCURENCY" in done.stderr


@pytest.mark.parametrize(
    ("flags", "env"),
    [(["--workers", "2"], {}), ([], {"DSOCR_SERVER__WORKERS": "2"})],
    ids=["flag", "variable"],
)
def test_several_workers_on_the_vllm_engine_stop_start_up_pointing_to_its_multi_gpu_settings(
    flags: list[str], env: dict[str, str]
) -> None:
    # One process serves the GPU; several would each try to load the model onto it.
    done = run_dsocr("serve", "--engine", "vllm", "--port", "0", *flags, env=env)
    assert done.returncode == 2
    assert "--workers 2 (DSOCR_SERVER__WORKERS) is for the CPU and fake engines" in done.stderr
    assert "DSOCR_ENGINE__VLLM__DATA_PARALLEL_SIZE" in done.stderr and "DSOCR_ENGINE__REPLICAS" in done.stderr
    assert "Traceback" not in done.stderr


def test_batch_uses_the_engine_named_in_the_environment(blank_png: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_dsocr("batch", str(blank_png), "--out", str(out), "-q", env={"DSOCR_ENGINE__KIND": "fake"})
    assert done.returncode == 0, done.stderr
    assert (out / "blank" / "blank.md").read_text(encoding="utf-8").startswith(FAKE_TITLE)


def test_other_settings_reach_ocr_too(blank_png: Path) -> None:
    done = run_dsocr("ocr", str(blank_png), "--engine", "fake", env={"DSOCR_LIMITS__MAX_UPLOAD_BYTES": "100"})
    assert done.returncode == 2
    assert "DSOCR_LIMITS__MAX_UPLOAD_BYTES" in done.stderr


# --- --version ------------------------------------------------------------------------------------


def test_version_prints_the_package_version() -> None:
    done = run_dsocr("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"dsocr {dsocr.__version__}"


# --- stdin ----------------------------------------------------------------------------------------


def test_ocr_reads_an_image_from_stdin(blank_png: Path) -> None:
    done = run_dsocr("ocr", "-", "--engine", "fake", stdin=blank_png.read_bytes())
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(FAKE_TITLE)


def test_ocr_reads_a_pdf_from_stdin(tmp_path: Path) -> None:
    data = _pdf(tmp_path / "doc.pdf", 2).read_bytes()
    done = run_dsocr("ocr", "-", "--engine", "fake", "--pages", "2", "--format", "txt", stdin=data)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\f") == 0 and "A Fake Document for Testing" in done.stdout


def test_stdin_over_the_upload_limit_is_refused(blank_png: Path) -> None:
    data = blank_png.read_bytes()
    done = run_dsocr(
        "ocr",
        "-",
        "--engine",
        "fake",
        stdin=data,
        env={"DSOCR_LIMITS__MAX_UPLOAD_BYTES": str(len(data) - 1)},
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "DSOCR_LIMITS__MAX_UPLOAD_BYTES" in done.stderr


def test_empty_stdin_is_refused(blank_png: Path) -> None:
    done = run_dsocr("ocr", "-", "--engine", "fake", stdin=b"")
    assert done.returncode == 2 and "empty" in done.stderr


# --- crop links -----------------------------------------------------------------------------------


def _links(markdown: str) -> list[str]:
    return re.findall(r"!\[\]\(([^)]+)\)", markdown)


def test_crop_links_point_where_the_crops_were_written(blank_png: Path, tmp_path: Path) -> None:
    done = run_dsocr("ocr", str(blank_png), "--engine", "fake", "--crops", "figs", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    links = _links(done.stdout)
    assert links == ["figs/0.png"]
    assert all((tmp_path / link).is_file() for link in links)


def test_crop_links_are_relative_to_the_out_file(blank_png: Path, tmp_path: Path) -> None:
    out = tmp_path / "md" / "page.md"
    out.parent.mkdir()
    pdf = _pdf(tmp_path / "doc.pdf", 2)
    done = run_dsocr(
        "ocr", str(pdf), "--engine", "fake", "--crops", "figs", "--out", str(out), "-q", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    links = _links(out.read_text(encoding="utf-8"))
    assert links == ["../figs/0.png", "../figs/1.png"]
    assert all((out.parent / link).resolve().is_file() for link in links)
