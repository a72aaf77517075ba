"""The ``dsocr`` command line. Each verb is a thin front end over the library.

Exit codes scripts can trust: 0 success, 1 internal error, 2 bad input or usage,
3 engine failure, 4 partial success (some pages failed, the rest were written); the table from
errors to codes is ``dsocr.cli_exit``.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from dsocr.errors import DsocrError
    from dsocr.settings import Settings

app = typer.Typer(
    name="dsocr",
    help="DeepSeek-OCR: OCR scans, photos and PDFs into markdown, text and layout blocks.\n\n"
    "Every command reads its settings from DSOCR_* environment variables (e.g. DSOCR_ENGINE__KIND=fake); "
    "a flag, when given, overrides its variable.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from dsocr import __version__

        typer.echo(f"dsocr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the dsocr version and exit."
        ),
    ] = False,
) -> None:
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

    from dsocr.cli_exit import exit_code_of
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
        fail(f"{exc.message}{where}", exit_code_of(exc))
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


# --- serve / ocr: the HTTP server, and one-shot OCR through the same pipeline (src/dsocr/cli_ocr.py) ---


class EngineChoice(str, Enum):
    """``--engine`` values (``auto`` picks vLLM on a GPU host with the model, else the CPU engine)."""

    auto = "auto"
    vllm = "vllm"
    cpu = "cpu"
    fake = "fake"


# Options that `dsocr ocr` and `dsocr batch` share.
EngineOption = Annotated[
    EngineChoice | None,
    typer.Option(
        help="Engine (default: DSOCR_ENGINE__KIND, else auto: vLLM on a GPU host with the model, else cpu)."
    ),
]
ModelOption = Annotated[
    str | None,
    typer.Option(help="Hugging Face id or local directory of the model (default: DSOCR_ENGINE__MODEL)."),
]
ModeOption = Annotated[str, typer.Option(help="Resolution mode: tiny, small, base, large, gundam.")]
PresetOption = Annotated[
    str | None, typer.Option(help="Prompt preset: document (default), ocr, free, figure, describe.")
]
PromptOption = Annotated[str | None, typer.Option(help="A free prompt instead of a preset.")]
MaxTokensOption = Annotated[int | None, typer.Option(min=1, help="Most tokens generated per page.")]
ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        help="Send the work to this dsocr server (e.g. http://gpu-host:8000) instead of running an "
        "engine here; --model then names one of its served models. Default: DSOCR_REMOTE__URL.",
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        help="The server's API key (visible in `ps`: prefer DSOCR_REMOTE__API_KEY).",
    ),
]


def _fail(message: str, exit_code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(exit_code)


def _fail_with(exc: DsocrError) -> NoReturn:
    from dsocr.cli_exit import exit_code_of

    where = f" ({exc.field})" if exc.field else ""
    _fail(f"{exc.message}{where}", exit_code_of(exc))


def _run_settings_or_exit(
    engine: EngineChoice | None,
    model: str | None,
    server: str | None,
    api_key: str | None,
    concurrency: int | None = None,
) -> Settings:
    """Settings for ``ocr`` and ``batch``: the engine flags, or the server to send the work to."""
    overrides: dict[str, Any] = {}
    if engine is not None:
        overrides.setdefault("engine", {})["kind"] = engine.value
    if model is not None:
        overrides.setdefault("engine", {})["model"] = model
    if server is not None:
        overrides.setdefault("remote", {})["url"] = server
    if api_key is not None:
        typer.echo(
            "warning: --api-key is visible to other users in `ps`; prefer DSOCR_REMOTE__API_KEY", err=True
        )
        overrides.setdefault("remote", {})["api_key"] = api_key
    if concurrency is not None:
        overrides.setdefault("remote", {})["concurrency"] = concurrency
    settings = _settings_or_exit(overrides)
    if settings.remote.url is not None and engine is not None:
        given = "--server" if server is not None else "DSOCR_REMOTE__URL"
        _fail(f"--engine runs an engine here, {given} sends the work to a server: give one of them")
    return settings


def _settings_or_exit(overrides: dict[str, Any]) -> Settings:
    """``Settings`` from the DSOCR_* environment, ``overrides`` (the flags given) replacing the
    fields they name; an invalid value exits 2 naming its variable."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from dsocr.settings import Settings, unparsable_variables

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "DSOCR_" + "__".join(part for part in first["loc"] if isinstance(part, str)).upper()
        if first["type"] == "extra_forbidden":
            _fail(f"unknown setting {where}: no setting has this name")
        if first["type"] == "value_error":  # dsocr's own checks name their variables
            _fail(f"invalid settings: {first.get('ctx', {}).get('error', first['msg'])}")
        _fail(f"invalid setting {where}: {first['msg']}")
    except SettingsError as exc:
        names = ", ".join(unparsable_variables()) or "a DSOCR_* variable"
        reason = f": {exc.__cause__}" if exc.__cause__ is not None else ""
        _fail(
            f"invalid setting {names}: list and dict settings are JSON "
            f'(e.g. \'["a", "b"]\' or \'{{"enforce_eager": true}}\'){reason}'
        )


def _read_api_keys(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        _fail(f"cannot read --api-key-file {path}: {exc.strerror or exc}")
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        _fail(f"--api-key-file {path} holds no key (one key per line; # starts a comment)")
    return keys


@app.command("serve")
def serve_command(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind. Default: DSOCR_SERVER__HOST or 127.0.0.1.")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port. Default: DSOCR_SERVER__PORT or 8000.")
    ] = None,
    engine: Annotated[
        EngineChoice | None, typer.Option(help="Engine. Default: DSOCR_ENGINE__KIND or auto.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Hugging Face id or local directory of the model.")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Server processes, each with its own engine (CPU and fake engines). The vLLM engine "
            "serves its GPUs from one process: use DSOCR_ENGINE__VLLM__DATA_PARALLEL_SIZE or "
            "DSOCR_ENGINE__REPLICAS for several.",
        ),
    ] = None,
    max_pages: Annotated[int | None, typer.Option(min=1, help="Most PDF pages per request.")] = None,
    max_upload_mb: Annotated[float | None, typer.Option(min=0.001, help="Largest upload, in MiB.")] = None,
    timeout: Annotated[
        float | None, typer.Option(min=0.001, help="Deadline per request, in seconds.")
    ] = None,
    api_key_file: Annotated[
        Path | None, typer.Option(help="File with API keys, one per line. Or set DSOCR_SERVER__API_KEYS.")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(help="An API key (visible in `ps`: prefer --api-key-file or the env variable)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run the HTTP server: /v1/ocr, /predict, OpenAI-compatible /v1/chat/completions, health and metrics."""
    import uvicorn

    from dsocr.engine.factory import select_engine
    from dsocr.engine.gpus import disable_nvlink_multicast
    from dsocr.errors import ConfigError, DsocrError

    # One Settings object from the environment and the flags given; it is handed to every server
    # process as an object, never written back into the environment.
    overrides: dict[str, dict[str, Any]] = {"engine": {}, "limits": {}, "server": {}}
    if host is not None:
        overrides["server"]["host"] = host
    if port is not None:
        overrides["server"]["port"] = port
    if workers is not None:
        overrides["server"]["workers"] = workers
    if engine is not None:
        overrides["engine"]["kind"] = engine.value
    if model is not None:
        overrides["engine"]["model"] = model
    if max_pages is not None:
        overrides["limits"]["max_pdf_pages"] = max_pages
    if max_upload_mb is not None:
        overrides["limits"]["max_upload_bytes"] = int(max_upload_mb * 1024 * 1024)
    if timeout is not None:
        overrides["limits"]["request_timeout_s"] = timeout
    keys: list[str] = []
    if api_key_file is not None:
        keys.extend(_read_api_keys(api_key_file))
    if api_key is not None:
        typer.echo(
            "warning: --api-key is visible to other users in `ps`; prefer --api-key-file or "
            "DSOCR_SERVER__API_KEYS",
            err=True,
        )
        keys.append(api_key)
    if keys:
        overrides["server"]["api_keys"] = keys
    settings = _settings_or_exit({section: values for section, values in overrides.items() if values})
    # For vLLM's engine cores and their workers, which read these switches from the environment.
    disable_nvlink_multicast()
    selection = select_engine(settings.engine)
    server = settings.server
    if selection.kind == "vllm" and server.workers > 1:
        _fail_with(
            ConfigError(
                f"--workers {server.workers} (DSOCR_SERVER__WORKERS) is for the CPU and fake engines: "
                "on the vLLM engine one server process serves the GPU; for several GPUs set "
                "DSOCR_ENGINE__VLLM__DATA_PARALLEL_SIZE or DSOCR_ENGINE__REPLICAS",
                field="server.workers",
            )
        )
    shown_host = f"[{server.host}]" if ":" in server.host else server.host
    typer.echo(f"dsocr: engine {selection.kind} ({selection.reason})", err=True)
    auth = (
        f"{len(server.api_keys)} API key(s)"
        if server.api_keys
        else "no API key (open to anyone who can connect)"
    )
    url = f"http://{shown_host}:{server.port}"
    typer.echo(
        f"dsocr: serving on {url} (playground {url}/; OpenAI base URL {url}/v1; {auth}; "
        f"{server.workers} worker(s))",
        err=True,
    )
    if server.workers == 1:
        import logging

        from dsocr.server.app import Server, create_app

        # dsocr's own log (the engine's start phases, its warnings) at the level uvicorn's has;
        # uvicorn configures only its own loggers.
        logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
        config = uvicorn.Config(create_app(settings), host=server.host, port=server.port, log_level=log_level)
        Server(config).run()
        return
    from dsocr.server.workers import serve_workers

    try:
        serve_workers(settings, workers=server.workers, log_level=log_level)
    except KeyboardInterrupt:
        pass
    except DsocrError as exc:
        _fail_with(exc)


@app.command("ocr")
def ocr_command(
    source: Annotated[
        str, typer.Argument(help="An image or PDF file, an http(s) URL of one, or '-' to read stdin.")
    ],
    engine: EngineOption = None,
    model: ModelOption = None,
    mode: ModeOption = "gundam",
    preset: PresetOption = None,
    prompt: PromptOption = None,
    pages: Annotated[str | None, typer.Option(help="PDF pages, e.g. 1-3,5 (default: all).")] = None,
    output_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Output file format: md, txt, json, pdf (searchable), hocr, alto, html (or a format's "
            "name). Default: from --out's suffix (.md .txt .json .pdf .hocr .xml .html), else md.",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")] = None,
    crops: Annotated[
        Path | None,
        typer.Option(
            help="Directory for figure crops (N.png); the markdown links them there "
            "(relative to --out's folder when given)."
        ),
    ] = None,
    viz: Annotated[
        Path | None,
        typer.Option(help="Box overlay PNG (NAME-pN.png per PDF page), or a layout PDF if it ends in .pdf."),
    ] = None,
    max_tokens: MaxTokensOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or warnings.")] = False,
    server: ServerOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """OCR an image or PDF into markdown, text, JSON, a searchable PDF, hOCR, ALTO or HTML (no server
    needed; with --server, on that server's engine, the files written here).

    Exit codes: 0 done, 2 bad input or usage, 3 engine failure, 4 some pages failed (the rest written).
    """
    from dsocr.cli_ocr import OcrJob, run_ocr
    from dsocr.errors import DsocrError

    settings = _run_settings_or_exit(engine, model, server, api_key)
    job = OcrJob(
        source=source,
        mode=mode,
        preset=preset,
        prompt=prompt,
        pages=pages,
        output_format=output_format,
        out=out,
        crops_dir=crops,
        viz=viz,
        max_tokens=max_tokens,
        quiet=quiet,
        model=model if settings.remote.url is not None else None,
    )
    try:
        # Bytes: click writes them as they are (a PDF to a pipe stays a PDF).
        outcome = run_ocr(job, settings, write_stdout=lambda data: typer.echo(data, nl=False))
    except DsocrError as exc:
        _fail_with(exc)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    if not quiet:
        for path in outcome.written:
            typer.echo(f"wrote {path}", err=True)
    if outcome.exit_code:
        failed = len(outcome.failed)
        typer.echo(f"error: {failed} of {len(outcome.results)} page(s) failed", err=True)
        raise typer.Exit(outcome.exit_code)


# --- batch: folders of images and PDFs, resumable, locally or on Ray (src/dsocr/batch/) -------------

# Failed files (and duplicates) named on stderr; summary.json lists them all.
_LISTED_FILES = 10


def _literal(text: str) -> str:
    """Help text shown as written: rich markup would take the ``[ray]`` of ``dsocr[ray]`` for a tag."""
    from typer.core import DEFAULT_MARKUP_MODE

    return text.replace("[", "\\[") if DEFAULT_MARKUP_MODE == "rich" else text


@app.command("batch")
def batch_command(
    inputs: Annotated[
        list[str], typer.Argument(metavar="INPUT...", help="Folders (recursive), globs, images and PDFs.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created; holds the manifest).")],
    engine: EngineOption = None,
    model: ModelOption = None,
    mode: ModeOption = "gundam",
    preset: PresetOption = None,
    prompt: PromptOption = None,
    dpi: Annotated[
        int | None, typer.Option(min=36, max=600, help="PDF rendering DPI (default DSOCR_LIMITS__PDF_DPI).")
    ] = None,
    max_tokens: MaxTokensOption = None,
    crops: Annotated[bool, typer.Option(help="Write figure crops (images/<page>_<i>.png).")] = True,
    overlays: Annotated[bool, typer.Option(help="Write box overlays (overlays/<page>.png).")] = False,
    formats: Annotated[
        str | None,
        typer.Option(
            help="Also write each document as OUT/<name>/<name>.<suffix> in these formats, comma-separated: "
            "txt, json, pdf (searchable), hocr, alto (.xml), html. <name>.md is always written."
        ),
    ] = None,
    max_in_flight: Annotated[
        int, typer.Option(min=1, help="Pages rendered and in the engine at once (per actor with --ray).")
    ] = 8,
    manifest: Annotated[
        Path | None, typer.Option(help="SQLite manifest (default OUT/manifest.sqlite).")
    ] = None,
    ray: Annotated[
        bool, typer.Option("--ray", help=_literal("Run as a Ray Data pipeline (pip install 'dsocr[ray]')."))
    ] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (implies --ray), e.g. auto or ray://head:10001.")
    ] = None,
    ray_actors: Annotated[
        int | None, typer.Option(min=1, help="OCR actors (default: one per GPU, or per CPU for cpu/fake).")
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option(
            "--quiet", "-q", help="No progress bar, summary line or duplicates (failed files still shown)."
        ),
    ] = False,
    server: ServerOption = None,
    api_key: ApiKeyOption = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --server: documents sent at once (a job per PDF, a request per image). "
            "Default: DSOCR_REMOTE__CONCURRENCY or 4.",
        ),
    ] = None,
) -> None:
    """OCR many files into OUT/<name>/ (markdown, page JSON, crops), resumably; here, on Ray, or
    on a dsocr server (--server).

    Re-running skips finished pages and retries failed ones. Exit codes: 0 done, 2 bad input or
    usage, 3 engine failure, 4 some pages failed (the rest written; see OUT/summary.json).
    """
    from dsocr.batch import BatchJob, run_batch
    from dsocr.errors import DsocrError

    settings = _run_settings_or_exit(engine, model, server, api_key, concurrency)
    remote = settings.remote.url is not None
    if remote and (ray or ray_address is not None):
        _fail("--ray runs the engines on a Ray cluster, --server on a dsocr server: give one of them")
    if remote and dpi is not None:
        _fail("--dpi does not go with --server: the server renders PDF pages at its DSOCR_LIMITS__PDF_DPI")
    if not remote and concurrency is not None:
        _fail("--concurrency is for --server; locally --max-in-flight sets the pages in the engine at once")
    job = BatchJob(
        inputs=tuple(inputs),
        out_dir=out,
        mode=mode,
        preset=preset,
        prompt=prompt,
        dpi=dpi,
        max_tokens=max_tokens,
        crops=crops,
        overlays=overlays,
        max_in_flight=max_in_flight,
        manifest_path=manifest,
        quiet=quiet,
        formats=tuple(name.strip() for name in (formats or "").split(",") if name.strip()),
        model=model if remote else None,
    )
    try:
        if remote:
            from dsocr.batch.remote_runner import run_batch_remote

            summary = run_batch_remote(job, settings)
        elif ray or ray_address is not None:
            from dsocr.batch.ray_pipeline import run_batch_ray

            summary = run_batch_ray(job, settings, address=ray_address, actors=ray_actors)
        else:
            summary = run_batch(job, settings)
    except DsocrError as exc:
        _fail_with(exc)
    except KeyboardInterrupt:
        _fail("interrupted; finished pages are kept, run the same command again to resume", 130)
    summary_path = out / "summary.json"
    if not quiet:
        typer.echo(f"dsocr batch: {summary.describe()}", err=True)
    # Failed files are errors: named even with --quiet.
    for line in summary.failure_lines(limit=_LISTED_FILES, summary_path=summary_path):
        typer.echo(line, err=True)
    if not quiet:
        for line in summary.duplicate_lines(limit=_LISTED_FILES, out_dir=out, summary_path=summary_path):
            typer.echo(line, err=True)
        typer.echo(f"summary: {summary_path}", err=True)
    raise typer.Exit(summary.exit_code)


def main() -> None:
    """Console-script entry point."""
    app()
