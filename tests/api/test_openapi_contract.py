"""The OpenAPI document tells the truth: the statuses, bodies and headers the routes really answer.

Checked against real servers on loopback: every error a route can be pushed into must be
documented there with the body and headers it really has; the request schemas accept a body
exactly when the server does (one image source); and a bounded Schemathesis pass over the whole
document finds no 5xx and no response that breaks the document.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import b64, png_bytes
from jsonschema import Draft202012Validator

from dsocr.engine.fake import FakeEngine
from dsocr.errors import EngineUnavailable
from dsocr.settings import Settings
from server_support import Server, running_server

KEY = "contract-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Small, so that the 413 cases send little; large enough for the test PNGs.
MAX_UPLOAD = 100_000
PNG = b64(png_bytes())
TRUNCATED_PNG = b64(png_bytes()[:200])
MODEL = "deepseek-ai/DeepSeek-OCR"


def _settings() -> Settings:
    return Settings(
        engine={"kind": "fake"},
        server={"api_keys": [KEY], "open_health": False},
        limits={"max_upload_bytes": MAX_UPLOAD},
        # A URL that is fetched fails fast, whatever DNS does on the machine.
        fetch={"connect_timeout_s": 1, "read_timeout_s": 1, "total_timeout_s": 2},
    )


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server(_settings(), FakeEngine()) as running:
        yield running


@pytest.fixture(scope="module")
def unready_server() -> Iterator[Server]:
    engine = FakeEngine(start_error=EngineUnavailable("the weights are missing"))
    with running_server(_settings(), engine) as running:
        yield running


def _openapi(base: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/openapi.json", headers=AUTH, timeout=10)
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    # The document's components ride along so that "#/components/schemas/…" references resolve.
    return Draft202012Validator({**schema, "components": document["components"]})


def _chat(image_url: str, text: str | None = None, model: str = MODEL) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": image_url}}]
    if text is not None:
        content.append({"type": "text", "text": text})
    return {"model": model, "messages": [{"role": "user", "content": content}]}


def _engine_fault(path: str, marker: str) -> dict[str, Any]:
    """A body whose prompt makes the fake engine fail the way ``marker`` says."""
    if path == "/v1/chat/completions":
        return _chat(f"data:image/png;base64,{PNG}", marker)
    return {"image_base64": PNG, "prompt": marker}


_BIG_BODY = b"{" + b" " * (MAX_UPLOAD * 3) + b"}"
_OCR_ROUTES = ("/v1/ocr", "/predict", "/v1/chat/completions")

# (method, path, request arguments, the status the server must answer)
_ERROR_CASES: list[tuple[str, str, dict[str, Any], int]] = [
    *[("post", path, {"json": {}}, 400) for path in _OCR_ROUTES],
    *[("post", path, {"json": {}, "headers": {}}, 401) for path in _OCR_ROUTES],
    ("get", "/v1/models", {"headers": {}}, 401),
    ("get", f"/v1/models/{MODEL}", {"headers": {}}, 401),
    ("get", "/v1/models/gpt-4o", {}, 404),
    ("get", "/health", {"headers": {}}, 401),
    ("get", "/ready", {"headers": {}}, 401),
    ("post", "/v1/chat/completions", {"json": _chat(f"data:image/png;base64,{PNG}", model="nope")}, 404),
    *[
        ("post", path, {"content": _BIG_BODY, "headers": {**AUTH, "Content-Type": "application/json"}}, 413)
        for path in _OCR_ROUTES
    ],
    ("post", "/v1/ocr", {"json": {"image_base64": b64(b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD))}}, 413),
    *[
        ("post", path, {"content": b"hello", "headers": {**AUTH, "Content-Type": "text/plain"}}, 415)
        for path in ("/v1/ocr", "/predict")
    ],
    ("post", "/v1/ocr", {"json": {"image_base64": TRUNCATED_PNG}}, 422),
    ("post", "/predict", {"json": {"image_base64": TRUNCATED_PNG}}, 422),
    ("post", "/v1/ocr", {"json": {"image_base64": PNG, "image_url": "https://example.invalid/a.png"}}, 400),
    # OpenAI clients map only 400 to BadRequestError: the chat route answers every invalid input 400.
    ("post", "/v1/chat/completions", {"json": _chat(f"data:image/png;base64,{TRUNCATED_PNG}")}, 400),
    ("post", "/v1/chat/completions", {"json": {**_chat(f"data:image/png;base64,{PNG}"), "stop": "\n"}}, 400),
    *[("post", path, {"json": _engine_fault(path, "[fake:fail=overloaded]")}, 429) for path in _OCR_ROUTES],
    *[("post", path, {"json": _engine_fault(path, "[fake:fail]")}, 500) for path in _OCR_ROUTES],
    *[("post", path, {"json": _engine_fault(path, "[fake:fail=unavailable]")}, 503) for path in _OCR_ROUTES],
    *[("post", path, {"json": _engine_fault(path, "[fake:fail=timeout]")}, 504) for path in _OCR_ROUTES],
]


def _operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    """The operation that serves ``path``, found through its template (``/v1/models/{model}``)."""
    for template, operations in document["paths"].items():
        pattern = "/".join(".+" if part.startswith("{") else re.escape(part) for part in template.split("/"))
        if re.fullmatch(pattern, path) and method in operations:
            operation: dict[str, Any] = operations[method]
            return operation
    raise AssertionError(f"{method.upper()} {path} is not in the document")


def _check_documented(document: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """The status is documented for the operation, the body fits its schema, required headers are sent."""
    operation = _operation(document, method, path)
    status = str(response.status_code)
    documented = operation["responses"].get(status)
    assert documented is not None, (
        f"{method.upper()} {path} answered {status}, documented only {sorted(operation['responses'])}: "
        f"{response.text[:300]}"
    )
    media_type = response.headers["content-type"].split(";")[0]
    assert media_type in documented.get("content", {}), f"{path} {status}: {media_type} is not documented"
    schema = documented["content"][media_type]["schema"]
    errors = [e.message for e in _validator(document, schema).iter_errors(response.json())]
    assert not errors, f"{method.upper()} {path} {status}: body breaks the documented schema: {errors}"
    for name, header in documented.get("headers", {}).items():
        if header.get("required"):
            assert name.lower() in response.headers, f"{path} {status}: header {name} is missing"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    _ERROR_CASES,
    ids=[f"{m}-{p}-{s}-{i}" for i, (m, p, _, s) in enumerate(_ERROR_CASES)],
)
def test_every_error_a_route_answers_is_documented_with_its_envelope(
    server: Server, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    kwargs = {"headers": AUTH, **kwargs}
    response = httpx.request(method.upper(), f"{server.url}{path}", timeout=30, **kwargs)
    assert response.status_code == status, response.text[:300]
    body = response.json()
    assert set(body["error"]) == {"type", "code", "message", "field", "param", "request_id"}
    _check_documented(_openapi(server.url), method, path, response)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/ready", None),
        ("post", "/v1/ocr", {"image_base64": PNG}),
        ("post", "/predict", {"image_base64": PNG}),
        ("post", "/v1/chat/completions", _chat(f"data:image/png;base64,{PNG}")),
    ],
)
def test_not_ready_answers_are_documented(
    unready_server: Server, method: str, path: str, body: dict[str, Any] | None
) -> None:
    response = httpx.request(
        method.upper(), f"{unready_server.url}{path}", json=body, headers=AUTH, timeout=30
    )
    assert response.status_code == 503, response.text[:300]
    assert int(response.headers["retry-after"]) >= 1
    _check_documented(_openapi(unready_server.url), method, path, response)


def test_no_operation_documents_a_body_the_server_never_sends(server: Server) -> None:
    # FastAPI's own 422 body ({"detail": [...]}) is never sent: dsocr answers its envelope instead.
    document = _openapi(server.url)
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400 or (path, status) == ("/ready", "503"):
                    continue
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (method, path, status)
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "422" not in chat and "415" not in chat


def _json_schema(document: dict[str, Any], path: str, media_type: str = "application/json") -> dict[str, Any]:
    schema: dict[str, Any] = document["paths"][path]["post"]["requestBody"]["content"][media_type]["schema"]
    return schema


_PNG_FILE = {"file": ("page.png", png_bytes(), "image/png")}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/ocr", {}),
        ("/v1/ocr", {"image_base64": PNG}),
        ("/v1/ocr", {"image_base64": PNG, "image_url": None, "path": ""}),
        ("/v1/ocr", {"image_base64": PNG, "image_url": "https://example.invalid/a.png"}),
        ("/v1/ocr", {"image_url": "", "mode": "tiny"}),
        ("/predict", {}),
        ("/predict", {"image": PNG}),
        ("/predict", {"image_url": None, "image_base64": PNG, "image": ""}),
        ("/predict", {"image_base64": PNG, "image": PNG}),
        ("/predict", {"image_url": "", "prompt": "Free OCR."}),
    ],
)
def test_json_schema_accepts_a_body_exactly_when_the_server_does(
    server: Server, path: str, body: dict[str, Any]
) -> None:
    document = _openapi(server.url)
    valid = _validator(document, _json_schema(document, path)).is_valid(body)
    response = httpx.post(f"{server.url}{path}", json=body, headers=AUTH, timeout=30)
    assert valid == (response.status_code == 200), (valid, response.status_code, response.text[:300])


@pytest.mark.parametrize(
    ("fields", "with_file"),
    [
        ({}, True),
        ({"mode": "tiny"}, False),
        ({"image_url": "https://example.invalid/a.png"}, True),
        ({"image_base64": PNG, "outputs": "markdown,text"}, False),
        ({"image_base64": PNG}, True),
    ],
)
def test_multipart_schema_accepts_a_form_exactly_when_the_server_does(
    server: Server, fields: dict[str, str], with_file: bool
) -> None:
    document = _openapi(server.url)
    form: dict[str, Any] = {**fields, **({"file": "<the file's bytes>"} if with_file else {})}
    valid = _validator(document, _json_schema(document, "/v1/ocr", "multipart/form-data")).is_valid(form)
    # (None, value) parts are plain form fields: the request is multipart even without a file.
    parts: dict[str, Any] = {name: (None, value) for name, value in fields.items()}
    if with_file:
        parts.update(_PNG_FILE)
    response = httpx.post(f"{server.url}/v1/ocr", files=parts, headers=AUTH, timeout=30)
    assert valid == (response.status_code == 200), (valid, response.status_code, response.text[:300])


# Every check that judges the server against its document; the others (negative_data_rejection,
# positive_data_acceptance …) judge how strict validation is, which the server decides, not the schema.
_SCHEMATHESIS_CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)


def _schemathesis() -> str:
    beside_python = Path(sys.executable).with_name("schemathesis")
    found = str(beside_python) if beside_python.exists() else shutil.which("schemathesis")
    assert found, "schemathesis is not installed: pip install -e '.[test]'"
    return found


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_answer_the_document_forbids(tmp_path: Path) -> None:
    # No API keys: every generated request reaches the route instead of stopping at 401.
    settings = Settings(
        engine={"kind": "fake"}, fetch={"connect_timeout_s": 1, "read_timeout_s": 1, "total_timeout_s": 2}
    )
    command = [
        _schemathesis(),
        "run",
        *("--checks", _SCHEMATHESIS_CHECKS),
        # The routes have no links between them, so there is no stateful phase to run.
        *("--phases", "examples,coverage,fuzzing"),
        # About 2,000 requests in all: under a minute on two cores.
        *("--max-examples", "300"),
        # The same cases on every run: a failure is reproducible and the pass cannot flake.
        "--generation-deterministic",
        *("--workers", "1"),
        *("--request-timeout", "30"),
        "--no-color",
    ]
    with running_server(settings, FakeEngine()) as running:
        result = subprocess.run(
            [*command, f"{running.url}/openapi.json"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=540,
            check=False,
        )
    assert result.returncode == 0, result.stdout[-20_000:] + result.stderr[-5_000:]
