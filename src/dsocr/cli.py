"""The ``dsocr`` command line. Each verb is a thin front end over the library.

Exit codes scripts can trust: 0 success, 1 internal error, 2 bad input or usage,
3 engine failure, 4 partial success (some pages failed, the rest were written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

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


# --- visualize: draw a saved result on its page image (src/dsocr/visualize.py) ---------------------


@app.command("visualize")
def visualize_command(
    result: Annotated[
        Path,
        typer.Argument(metavar="RESULT.json", help="A /predict or /v1/ocr answer, or `dsocr parse` JSON."),
    ],
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="The page image the result describes.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="PNG to write. Default: IMAGE's name + .viz.png.")
    ] = None,
    page: Annotated[
        int | None, typer.Option(min=1, help="Page of a multi-page result (1-based). Default: 1.")
    ] = None,
) -> None:
    """Draw the layout boxes (or geometry figure) of RESULT.json on IMAGE and write a PNG."""
    import json

    from dsocr.errors import DsocrError
    from dsocr.visualize import visualize

    def fail(message: str, exit_code: int = 2) -> NoReturn:
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(exit_code)

    try:
        document = json.loads(result.read_text(encoding="utf-8"))
    except FileNotFoundError:
        fail(f"result file not found: {result}")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read result file {result}: {exc}")
    except json.JSONDecodeError as exc:
        fail(f"{result} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")
    if not image.is_file():
        fail(f"image file not found: {image}")
    try:
        drawn = visualize(image, document, page=page)
    except DsocrError as exc:
        where = f" ({exc.field})" if exc.field else ""
        fail(f"{exc.message}{where}", exc.exit_code)
    for warning in drawn.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if drawn.is_empty:
        fail(f"{result} holds no boxes or geometry to draw")
    target = out if out is not None else image.with_name(image.stem + ".viz.png")
    try:
        if drawn.boxes is not None:
            drawn.boxes.save(target, format="PNG")
        elif drawn.geometry_png is not None:
            target.write_bytes(drawn.geometry_png)
    except OSError as exc:
        fail(f"cannot write {target}: {exc}")
    boxes = sum(len(block.boxes) for block in drawn.blocks)
    typer.echo(f"wrote {target} ({boxes} boxes)")


# --- parse: raw model output → blocks, markdown or text (src/dsocr/grounding) -----------------------


@app.command("parse")
def parse_command(
    raw_file: Annotated[
        str, typer.Argument(metavar="RAW.txt", help="Raw model output (tags included); '-' reads stdin.")
    ],
    width: Annotated[int, typer.Option(min=1, help="Width of the original image in pixels (after EXIF).")],
    height: Annotated[int, typer.Option(min=1, help="Height of the original image in pixels (after EXIF).")],
    prompt: Annotated[
        str | None, typer.Option(help="The prompt used; tells document output from OCR/Locate output.")
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="json (blocks, markdown, warnings), md or txt.")
    ] = "json",
) -> None:
    """Parse a saved raw DeepSeek-OCR answer into typed blocks, clean markdown or plain text."""
    import json
    import sys

    from dsocr.grounding import parse, parsed_to_json

    def fail(message: str) -> NoReturn:
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2)

    if output_format not in ("json", "md", "txt"):
        fail(f"--format must be json, md or txt, not {output_format!r}")
    try:
        data = sys.stdin.buffer.read() if raw_file == "-" else Path(raw_file).read_bytes()
    except FileNotFoundError:
        fail(f"raw output file not found: {raw_file}")
    except OSError as exc:
        fail(f"cannot read {raw_file}: {exc.strerror or exc}")
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Keep going: the parser is total, and the bad bytes are reported, not hidden.
        raw = data.decode("utf-8", errors="replace")
        typer.echo(
            f"warning: {raw_file} is not valid UTF-8 (first bad byte at {exc.start}); replaced", err=True
        )
    parsed = parse(raw, width=width, height=height, prompt=prompt)
    if output_format == "json":
        typer.echo(json.dumps(parsed_to_json(parsed), ensure_ascii=False, indent=2))
        return
    for warning in parsed.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(parsed.markdown if output_format == "md" else parsed.text)


def main() -> None:
    """Console-script entry point."""
    app()
