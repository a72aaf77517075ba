"""docs/api.md is what the server's own OpenAPI document generates (``scripts/api_reference.py``).

The script runs as a user runs it, in a subprocess; a reference that no longer matches the API
fails here with the command that regenerates it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dsocr.modes import MODELS
from dsocr.outputs import SELECTABLE
from dsocr.prompts import PRESETS

REPOSITORY = Path(__file__).resolve().parents[2]
SCRIPT = REPOSITORY / "scripts" / "api_reference.py"
API_MD = REPOSITORY / "docs" / "api.md"
COMMAND = "python scripts/api_reference.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=REPOSITORY
    )


def _section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _row(section: str, field: str) -> str:
    rows = [line for line in section.splitlines() if line.startswith(f"| `{field}` |")]
    assert rows, f"no row for {field}"
    return rows[0]


def test_docs_api_md_is_up_to_date_with_the_servers_openapi_document() -> None:
    result = _run("--check")
    assert result.returncode == 0, result.stderr


def test_a_stale_reference_fails_the_check_and_names_the_command_to_run(tmp_path: Path) -> None:
    current = API_MD.read_text(encoding="utf-8")
    assert "`max_tokens`" in current
    stale = tmp_path / "api.md"
    stale.write_text(current.replace("`max_tokens`", "`max_tokenz`"), encoding="utf-8")

    result = _run("--check", "--output", str(stale))

    assert result.returncode == 1
    assert COMMAND in result.stderr
    assert stale.read_text(encoding="utf-8") != current  # --check never writes


def test_the_reference_lists_every_value_the_ocr_route_accepts(tmp_path: Path) -> None:
    output = tmp_path / "api.md"
    assert _run("--output", str(output)).returncode == 0
    ocr = _section(output.read_text(encoding="utf-8"), "`POST /v1/ocr`")

    outputs_row = _row(ocr, "outputs")
    assert all(f"`{name}`" in outputs_row for name in SELECTABLE)
    preset_row = _row(ocr, "preset")
    assert all(f"`{name}`" in preset_row for name in PRESETS)
    mode_row = _row(ocr, "mode")
    assert all(f"`{name}`" in mode_row for profile in MODELS for name in profile.modes)
    assert '`"gundam"`' in mode_row  # the default


def test_the_chat_route_lists_dsocrs_extra_fields_apart_from_openais(tmp_path: Path) -> None:
    output = tmp_path / "api.md"
    assert _run("--output", str(output)).returncode == 0
    chat = _section(output.read_text(encoding="utf-8"), "`POST /v1/chat/completions`")
    extras = chat.split("Fields OpenAI's API does not define", 1)[1]

    for field in ("mode", "ngram_size", "window_size", "vllm_xargs"):
        _row(extras, field)
    assert not any(line.startswith(("| `model` |", "| `messages` |")) for line in extras.splitlines())
