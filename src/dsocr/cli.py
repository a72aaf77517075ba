"""The ``dsocr`` command line. Each verb is a thin front end over the library.

Exit codes scripts can trust: 0 success, 1 internal error, 2 bad input or usage,
3 engine failure, 4 partial success (some pages failed, the rest were written).
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="dsocr",
    help="DeepSeek-OCR: OCR scans, photos and PDFs into markdown, text and layout blocks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """DeepSeek-OCR command line."""


def main() -> None:
    """Console-script entry point."""
    app()
