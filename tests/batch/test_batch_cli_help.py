"""Help texts reach the user as written: rich markup must not eat `[ray]` in `pip install 'dsocr[ray]'`."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import typer

from dsocr.cli import app


def rendered_help(command: str, *, use_rich: bool) -> str:
    env = {**os.environ, "TERMINAL_WIDTH": "1000", "COLUMNS": "1000", "TYPER_USE_RICH": str(int(use_rich))}
    result = subprocess.run(
        [sys.executable, "-m", "dsocr", command, "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())  # plain click help wraps at 80 columns whatever the width


def bracketed_help_words() -> list[tuple[str, str]]:
    """(command, word) for every word with square brackets in a command's help or its options' help."""
    root = typer.main.get_command(app)
    found: list[tuple[str, str]] = []
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        texts = [command.help or ""] + [getattr(param, "help", None) or "" for param in command.params]
        for text in texts:
            # As the user should see it: "\\[" is rich markup's escape for a literal "[".
            found.extend((name, word.replace("\\[", "[")) for word in re.findall(r"\S*\[[^\]\s]*\]\S*", text))
    return found


@pytest.mark.parametrize("use_rich", [True, False], ids=["rich", "plain"])
def test_batch_help_shows_the_ray_extra(use_rich: bool) -> None:
    assert "pip install 'dsocr[ray]'" in rendered_help("batch", use_rich=use_rich)


def test_every_bracketed_word_in_a_help_text_is_shown_verbatim() -> None:
    words = bracketed_help_words()
    assert ("batch", "'dsocr[ray]').") in words
    for command in sorted({command for command, _ in words}):
        shown = rendered_help(command, use_rich=True)
        for word in (word for name, word in words if name == command):
            assert word in shown, (command, word)
