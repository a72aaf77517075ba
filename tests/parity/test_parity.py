"""One contract, every front end: the same input gives the same answer on every door.

Each behaviour is one test, run on every door (tests/parity/doors.py): ``/v1/ocr`` (JSON and
multipart), ``/predict``, the OpenAI chat route through the official client (plain and streamed),
the same through Truss's own proxy, ``dsocr ocr`` and ``dsocr batch``. Where a behaviour has no
meaning for a door, the test says why and skips it there. Servers are real ``dsocr serve``
processes on loopback with the fake engine, one per settings configuration
(tests/parity/parity_deployments.py); the CLI and batch run as processes with the same settings.
"""

from __future__ import annotations

import socket
from functools import cache

import httpx
import pytest
from doors import DOOR_NAMES, Door, HttpDoor, NativeDoor, OpenDoor, Outcome, PageOutcome
from parity_deployments import DEADLINE, DEFAULT, SLOW, Series, counters, gauge, wait_for, wait_idle
from parity_samples import (
    BODY_OVER_LIMIT,
    GARBAGE,
    MIXED_PDF,
    OVER_PIXELS,
    OVER_UPLOAD,
    PAGE,
    PLAIN_PDF,
    Expected,
    Sample,
    expected_reading,
)

from dsocr.cli_exit import EXIT_PARTIAL, exit_code_of
from dsocr.errors import DsocrError, InputTooLarge, InvalidInput, UndecodableInput, UnsupportedMediaType

pytestmark = pytest.mark.slow

every_door = pytest.mark.parametrize("door_name", DOOR_NAMES)
ENVELOPE_KEYS = {"type", "code", "message", "field", "param", "request_id"}
# Far below the slow engine's delay (parity_deployments.ENGINE_DELAY_S): work still going on
# after this was not stopped.
STOPPED_WITHIN_S = 10

NO_SERVER = "the CLI and batch run their own engine in their own process"


@cache
def expected(sample: Sample, preset: str, mode: str = "gundam") -> Expected:
    return expected_reading(sample, preset, mode)


def assert_envelope(outcome: Outcome, *, code: str, field: str | None, type_: str | None = None) -> None:
    """The HTTP error envelope, complete, with ``code`` and ``field`` (and ``param`` = ``field``)."""
    assert outcome.error is not None and outcome.error.envelope is not None, str(outcome)
    envelope = outcome.error.envelope
    assert set(envelope) == ENVELOPE_KEYS, str(outcome)
    assert (envelope["code"], envelope["field"], envelope["param"]) == (code, field, field), str(outcome)
    assert envelope["message"], str(outcome)
    assert envelope["request_id"], str(outcome)
    assert envelope["request_id"] == outcome.headers.get("x-request-id"), str(outcome)
    if type_ is not None:
        assert envelope["type"] == type_, str(outcome)


def assert_refused(
    door: Door,
    outcome: Outcome,
    *,
    error: type[DsocrError],
    status: int,
    field: str | None,
    option: bool = False,
) -> None:
    """Refused alike on every door: the HTTP doors with ``status`` (as the door's convention maps
    it) and the envelope naming ``field``; the CLI with the error's exit code and ``field`` named.
    Batch exits with the error's code too: a bad ``option`` refuses the run before any page is
    read, naming it; a bad file is a failed file with the error's code in ``summary.json``."""
    assert not outcome.ok, str(outcome)
    if isinstance(door, HttpDoor):
        assert outcome.status == door.invalid_input_status(status), str(outcome)
        assert_envelope(outcome, code=error.code, field=field, type_="invalid_request_error")
        return
    assert outcome.exit_code == exit_code_of(error), str(outcome)
    assert outcome.error is not None, str(outcome)
    if field is not None:
        assert outcome.error.field == field, str(outcome)
    if door.name == "batch" and option:
        assert outcome.pages == (), f"batch must refuse the option before reading any page: {outcome}"
    elif door.name == "batch":
        assert outcome.error.code == error.code, str(outcome)


def moved(before: dict[Series, float], after: dict[Series, float]) -> dict[Series, float]:
    """The series that changed, by how much."""
    changes = {
        series: after.get(series, 0.0) - before.get(series, 0.0) for series in set(before) | set(after)
    }
    return {series: change for series, change in changes.items() if change}


def read_first_event(sock: socket.socket) -> bytes:
    """Read until the first server-sent event's data has arrived (the answer has begun)."""
    received = b""
    while b"\ndata:" not in received and not received.startswith(b"data:"):
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the stream before its first event: {received[:500]!r}"
        received += chunk
    return received


# ---------------------------------------------------------------- 1. preset names


@every_door
@pytest.mark.parametrize("preset", ["ocr", "document"])
def test_a_preset_name_means_that_preset_on_every_door(
    door_name: str, preset: str, open_door: OpenDoor
) -> None:
    door = open_door(door_name, DEFAULT)
    want = expected(PAGE, preset)
    # The observable tells the presets apart: the fake engine reads `ocr` line by line and
    # `document` block by block, and their prompts count differently.
    other = expected(PAGE, "document" if preset == "ocr" else "ocr")
    assert (want.raw, want.prompt_tokens) != (other.raw, other.prompt_tokens)

    outcome = door.ocr(PAGE, preset=preset)

    assert outcome.ok, str(outcome)
    assert outcome.raw is not None or outcome.blocks is not None, str(outcome)
    if outcome.raw is not None:
        assert outcome.raw == want.raw, str(outcome)
    if outcome.blocks is not None:
        assert outcome.blocks == want.blocks, str(outcome)
    if outcome.markdown is not None:
        assert outcome.markdown == want.markdown, str(outcome)
    if outcome.prompt is not None:  # the doors that echo the prompt echo the preset's full prompt
        assert outcome.prompt == want.prompt, str(outcome)
    assert outcome.usage is not None, str(outcome)
    assert (outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == (
        want.prompt_tokens,
        want.completion_tokens,
    ), str(outcome)


# ---------------------------------------------------------------- 2. limits


@every_door
@pytest.mark.parametrize(
    ("limit", "sample"), [("pixels", OVER_PIXELS), ("upload", OVER_UPLOAD)], ids=["pixels", "upload"]
)
def test_an_input_over_a_limit_is_refused_alike(
    door_name: str, limit: str, sample: Sample, open_door: OpenDoor
) -> None:
    door = open_door(door_name, DEFAULT)
    outcome = door.ocr(sample, preset="document")
    assert_refused(door, outcome, error=InputTooLarge, status=413, field=door.source_field)
    assert outcome.error is not None
    setting = "MAX_IMAGE_PIXELS" if limit == "pixels" else "MAX_UPLOAD_BYTES"
    assert f"DSOCR_LIMITS__{setting}" in outcome.error.message, str(outcome)


@every_door
def test_a_body_over_the_body_limit_is_413_at_the_edge(door_name: str, open_door: OpenDoor) -> None:
    door = open_door(door_name, DEFAULT)
    if not isinstance(door, HttpDoor):
        pytest.skip("no request body: the CLI and batch read files (their size limit is the upload test's)")
    outcome = door.ocr(BODY_OVER_LIMIT, preset="document")
    # 413 on every route, the OpenAI one included (its documented exception to "400 for invalid").
    assert outcome.status == 413, str(outcome)
    assert_envelope(outcome, code="input_too_large", field="body", type_="invalid_request_error")


# ---------------------------------------------------------------- 3. admission


@every_door
def test_a_request_beyond_the_page_slots_gets_429_with_retry_after(
    door_name: str, open_door: OpenDoor
) -> None:
    door = open_door(door_name, SLOW)
    if not isinstance(door, HttpDoor):
        pytest.skip(f"admission is a server's: {NO_SERVER}")
    wait_idle(door.root)
    # The one page slot is taken by a request that runs as long as the slow engine takes.
    holder = NativeDoor("holder", door.root, multipart=False)
    with holder.leaving_client(PAGE, preset="document"):
        wait_for(
            lambda: gauge(door.root, "dsocr_queue_depth_pages") >= 1,
            within_s=STOPPED_WITHIN_S,
            what="the first request admitted",
        )
        outcome = door.ocr(PAGE, preset="document")
    assert outcome.status == 429, str(outcome)
    assert int(outcome.headers.get("retry-after", "0")) >= 1, str(outcome)
    assert_envelope(outcome, code="engine_overloaded", field=None, type_="rate_limit_error")


# ---------------------------------------------------------------- 4. deadline


@every_door
def test_a_request_past_its_deadline_is_504(door_name: str, open_door: OpenDoor) -> None:
    door = open_door(door_name, DEADLINE)
    if not isinstance(door, HttpDoor):
        pytest.skip(
            "local jobs run without a request deadline (DSOCR_LIMITS__REQUEST_TIMEOUT_S is a server's)"
        )
    outcome = door.ocr(PAGE, preset="document")
    # Streams too: the deadline passes before the first chunk, so there is still a status to say it.
    assert outcome.status == 504, str(outcome)
    assert_envelope(outcome, code="engine_timeout", field=None, type_="server_error")
    assert outcome.error is not None, str(outcome)
    assert "DSOCR_LIMITS__REQUEST_TIMEOUT_S" in outcome.error.message, str(outcome)


# ---------------------------------------------------------------- 5. abort on disconnect


@every_door
def test_a_client_that_leaves_stops_its_work_and_the_server_stays_responsive(
    door_name: str, open_door: OpenDoor
) -> None:
    door = open_door(door_name, SLOW)
    if not isinstance(door, HttpDoor):
        pytest.skip(f"no client to leave: {NO_SERVER}, and Ctrl-C ends both")
    wait_idle(door.root)
    before = counters(door.root)
    with door.leaving_client(PAGE, preset="document") as sock:
        wait_for(
            lambda: gauge(door.root, "dsocr_queue_depth_pages") >= 1,
            within_s=STOPPED_WITHIN_S,
            what="the request admitted",
        )
        if door.streams:
            read_first_event(sock)  # leave mid-stream, not before the stream began
    abort = ("dsocr_aborted_requests_total", (("reason", "client_disconnect"),))
    wait_for(
        lambda: moved(before, counters(door.root)).get(abort) == 1,
        within_s=STOPPED_WITHIN_S,
        what="the abandoned request counted once in dsocr_aborted_requests_total",
    )
    # Its page slot is given back and nothing of it is served any more, long before the engine
    # would have finished the page: its work was stopped.
    wait_for(
        lambda: (
            gauge(door.root, "dsocr_queue_depth_pages") == 0
            and gauge(door.root, "dsocr_http_requests_in_flight") <= 1
        ),
        within_s=STOPPED_WITHIN_S,
        what="the abandoned request's page slot released and the request no longer served",
    )
    assert httpx.get(f"{door.root}/ready", timeout=10).status_code == 200


# ---------------------------------------------------------------- 6. error envelope


@every_door
def test_an_unknown_mode_is_refused_naming_mode(door_name: str, open_door: OpenDoor) -> None:
    door = open_door(door_name, DEFAULT)
    outcome = door.ocr(PAGE, preset="document", mode="huge")
    assert_refused(door, outcome, error=InvalidInput, status=400, field="mode", option=True)
    assert outcome.error is not None and "huge" in outcome.error.message, str(outcome)


@every_door
def test_an_unknown_preset_is_refused_naming_preset(door_name: str, open_door: OpenDoor) -> None:
    door = open_door(door_name, DEFAULT)
    if door.one_image:
        pytest.skip("its one text field takes a preset name or any free prompt: an unknown name is a prompt")
    outcome = door.ocr(PAGE, preset="huge")
    assert_refused(door, outcome, error=InvalidInput, status=400, field="preset", option=True)
    assert outcome.error is not None and "huge" in outcome.error.message, str(outcome)


@every_door
def test_an_undecodable_image_is_refused_naming_its_field(door_name: str, open_door: OpenDoor) -> None:
    door = open_door(door_name, DEFAULT)
    outcome = door.ocr(GARBAGE, preset="document")
    assert_refused(door, outcome, error=UndecodableInput, status=422, field=door.source_field)


# ---------------------------------------------------------------- 7. metrics


@every_door
def test_metrics_move_the_same_series_by_the_same_amounts(door_name: str, open_door: OpenDoor) -> None:
    door = open_door(door_name, DEFAULT)
    if not isinstance(door, HttpDoor):
        pytest.skip(f"no /metrics: {NO_SERVER} (their counts are in their JSON output)")
    want = expected(PAGE, "ocr")

    def one_success_and_two_errors(through: HttpDoor) -> dict[Series, float]:
        before = counters(through.root)
        success = through.ocr(PAGE, preset="ocr")
        assert success.ok, str(success)
        undecodable = through.ocr(GARBAGE, preset="ocr")
        assert undecodable.error is not None, str(undecodable)
        assert undecodable.error.code == "undecodable_input", str(undecodable)
        engine_failure = through.ocr(PAGE, prompt="Free OCR. [fake:fail]")
        assert engine_failure.error is not None, str(engine_failure)
        assert engine_failure.error.code == "engine_error", str(engine_failure)
        return moved(before, counters(through.root))

    counted = one_success_and_two_errors(door)
    shown = f"{door.name} counted {counted}"
    assert counted.get(("dsocr_pages_total", (("outcome", "ok"),))) == 1, shown
    assert counted.get(("dsocr_prompt_tokens_total", ())) == want.prompt_tokens, shown
    assert counted.get(("dsocr_vision_tokens_total", ())) == want.vision_tokens, shown
    assert counted.get(("dsocr_output_tokens_total", ())) == want.completion_tokens, shown
    for code in ("undecodable_input", "engine_error"):
        assert counted.get(("dsocr_errors_total", (("code", code), ("scope", "request")))) == 1, shown
    # The yardstick: the same three requests through /v1/ocr on the same server.
    native = one_success_and_two_errors(NativeDoor("native", door.root, multipart=False))
    assert counted == native, f"{door.name} counted {counted}, /v1/ocr counted {native}"


# ---------------------------------------------------------------- 8. usage


@every_door
def test_usage_is_the_same_on_every_door(door_name: str, open_door: OpenDoor) -> None:
    door = open_door(door_name, DEFAULT)
    # A mode other than the default: every door must pass it on (it changes the vision tokens).
    want = expected(PAGE, "ocr", "small")
    assert want.vision_tokens != expected(PAGE, "ocr").vision_tokens
    outcome = door.ocr(PAGE, preset="ocr", mode="small")
    assert outcome.ok, str(outcome)
    assert outcome.usage is not None, str(outcome)
    assert (outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == (
        want.prompt_tokens,
        want.completion_tokens,
    ), str(outcome)
    if outcome.usage.vision_tokens is not None:
        assert outcome.usage.vision_tokens == want.vision_tokens, str(outcome)


# ---------------------------------------------------------------- 9. per-page errors


@every_door
def test_a_failed_pdf_page_is_reported_by_number_and_the_others_returned(
    door_name: str, open_door: OpenDoor
) -> None:
    door = open_door(door_name, DEFAULT)
    if door.one_image:
        pytest.skip("takes one image, never a PDF (test_a_pdf_is_refused_where_one_image_is_read)")
    outcome = door.ocr(MIXED_PDF, preset="document")
    assert outcome.pages == (
        PageOutcome(1, True),
        PageOutcome(2, False, "render_budget_exceeded"),
        PageOutcome(3, True),
    ), str(outcome)
    assert not outcome.ok, str(outcome)
    if isinstance(door, HttpDoor):
        assert outcome.status == 200, str(outcome)
    else:
        assert outcome.exit_code == EXIT_PARTIAL, str(outcome)
    if door.name == "batch":
        assert outcome.error is not None and outcome.error.code == "render_budget_exceeded", str(outcome)


@every_door
def test_a_pdf_is_refused_where_one_image_is_read(door_name: str, open_door: OpenDoor) -> None:
    door = open_door(door_name, DEFAULT)
    if not door.one_image:
        pytest.skip(
            "reads PDFs page by page (test_a_failed_pdf_page_is_reported_by_number_and_the_others_returned)"
        )
    outcome = door.ocr(PLAIN_PDF, preset="document")
    assert_refused(door, outcome, error=UnsupportedMediaType, status=415, field=door.source_field)
    assert outcome.error is not None and "/v1/ocr" in outcome.error.message, str(outcome)
