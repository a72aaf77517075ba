"""dsocr's front ends ("doors") behind one interface, so that tests compare outcomes, not shapes.

Every door takes the same thing — a file a user has, a preset name or a free prompt, a mode — and
answers an :class:`Outcome`: whether it worked, the HTTP status or exit code, the error (its
code, the field it names, the message), the reading (raw text, blocks, markdown), the echoed
prompt and the token usage, and for documents each page's result. A door reports only what it
really shows its user; what it does not show stays ``None``.

The doors, each driven the way its users drive it:

* ``native``: ``POST /v1/ocr`` with JSON (``image_base64``); ``native-multipart``: the same
  route with a ``file`` upload;
* ``predict``: ``POST /predict``, the seed Truss contract (``image_base64`` + ``prompt``, and
  ``mode``);
* ``chat`` and ``chat-stream``: ``POST /v1/chat/completions`` through the official ``openai``
  client (one user message: an ``image_url`` part with a ``data:`` URL and a text part with the
  preset name or prompt; ``mode`` in ``extra_body``), without and with ``stream=True``;
* ``truss-predict``, ``truss-chat``, ``truss-chat-stream``: the same through Truss's own proxy
  (its predict path ``/v1/models/model:predict`` and the forwarded OpenAI route) in front of the
  Truss deployment's ``dsocr serve``;
* ``cli``: ``dsocr ocr FILE --format json`` as a process;
* ``batch``: ``dsocr batch IN --out OUT`` as a process, read back from ``summary.json`` and the
  per-page JSON files.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
from parity_deployments import Config
from parity_samples import Block, Sample, reading_of, without_link_targets

__all__ = [
    "DOOR_NAMES",
    "HTTP_DOOR_NAMES",
    "MODEL",
    "BatchDoor",
    "ChatDoor",
    "CliDoor",
    "Door",
    "HttpDoor",
    "NativeDoor",
    "OpenDoor",
    "Outcome",
    "PageOutcome",
    "PredictDoor",
    "Problem",
    "Usage",
]

DOOR_NAMES = (
    "native",
    "native-multipart",
    "predict",
    "chat",
    "chat-stream",
    "truss-predict",
    "truss-chat",
    "truss-chat-stream",
    "cli",
    "batch",
)
HTTP_DOOR_NAMES = tuple(name for name in DOOR_NAMES if name not in ("cli", "batch"))
# The served model's name on every server of the suite (the default model, and Truss's
# DSOCR_ENGINE__SERVED_MODEL_NAME).
MODEL = "deepseek-ai/DeepSeek-OCR"
# The chat request's fields, as the OpenAI route names them in errors.
CHAT_IMAGE_FIELD = "messages[0].content[0].image_url.url"
_HTTP_TIMEOUT_S = 120
_PROCESS_TIMEOUT_S = 180


@dataclass(frozen=True)
class Problem:
    """An error as the door reports it. ``code`` is ``None`` where the door does not say it (the
    CLI: its exit code stands for it); ``envelope`` is an HTTP error body's ``error`` object."""

    code: str | None
    field: str | None
    message: str
    envelope: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Usage:
    """Token usage; ``vision_tokens`` where the door reports it."""

    prompt_tokens: int
    completion_tokens: int
    vision_tokens: int | None = None


@dataclass(frozen=True)
class PageOutcome:
    """One page of a document: its number, and its error code if it failed."""

    number: int
    ok: bool
    error_code: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What one door answered. ``ok``: everything asked for was done (no page failed)."""

    door: str
    ok: bool
    status: int | None = None
    exit_code: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    error: Problem | None = None
    raw: str | None = None
    blocks: tuple[Block, ...] | None = None
    markdown: str | None = None
    prompt: str | None = None
    usage: Usage | None = None
    pages: tuple[PageOutcome, ...] = ()
    # The door's own answer, shortened: for assertion messages.
    answer: str = ""

    def __str__(self) -> str:
        return f"{self.door} answered status={self.status} exit={self.exit_code}: {self.answer[:1500]}"


def _usage(data: Mapping[str, Any] | None) -> Usage | None:
    if not data:
        return None
    return Usage(
        prompt_tokens=int(data["prompt_tokens"]),
        completion_tokens=int(data["completion_tokens"]),
        vision_tokens=data.get("vision_tokens"),
    )


def _page_error_code(page: Mapping[str, Any]) -> str | None:
    error = page.get("error")
    if not error:
        return None
    # /v1/ocr pages say "code"; the CLI's and batch's page JSON say "type" (the same value).
    code = error.get("code") or error.get("type")
    return str(code) if code is not None else None


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _http_problem(response: httpx.Response) -> Problem:
    try:
        envelope = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return Problem(code=None, field=None, message=response.text[:500])
    return Problem(
        code=envelope.get("code"),
        field=envelope.get("field"),
        message=str(envelope.get("message")),
        envelope=envelope,
    )


class Door(ABC):
    """One front end. ``http``: a server route (statuses, admission, deadlines, /metrics)."""

    http: bool = False
    # Takes one image per request (no PDF).
    one_image: bool = False
    # The name the door gives its image or PDF in errors (``None``: it names none).
    source_field: str | None = None

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def ocr(
        self, sample: Sample, *, preset: str | None = None, prompt: str | None = None, mode: str | None = None
    ) -> Outcome:
        """Read ``sample`` with a preset name or a free prompt (neither: the default) in ``mode``."""

    def __repr__(self) -> str:
        return f"<door {self.name}>"


# ``open_door(name, config)``: the door called ``name`` onto servers (or processes) run with ``config``.
OpenDoor = Callable[[str, Config], Door]


# ---------------------------------------------------------------- HTTP doors


class HttpDoor(Door):
    """A door that is a server route. ``root`` is the server as this door reaches it (through
    Truss's proxy for the truss doors): its /metrics and /ready are read there."""

    http = True
    # Answers server-sent events: it has a first byte before it has a result.
    streams = False

    def __init__(self, name: str, root: str) -> None:
        super().__init__(name)
        self.root = root

    def invalid_input_status(self, status: int) -> int:
        """The status this door answers for an invalid input whose own status is ``status``."""
        return status

    @abstractmethod
    def request(
        self, sample: Sample, *, preset: str | None = None, prompt: str | None = None, mode: str | None = None
    ) -> httpx.Request:
        """The HTTP request this door sends for ``ocr`` (the same bytes its client puts on the wire)."""

    def send(
        self, sample: Sample, *, preset: str | None, prompt: str | None, mode: str | None
    ) -> tuple[httpx.Response, Outcome | None]:
        """Send this door's request; the response, and the refusal's outcome unless it was a 200."""
        with httpx.Client(timeout=_HTTP_TIMEOUT_S) as client:
            response = client.send(self.request(sample, preset=preset, prompt=prompt, mode=mode))
        if response.status_code == 200:
            return response, None
        refused = Outcome(
            self.name,
            ok=False,
            status=response.status_code,
            headers=_lower(response.headers),
            error=_http_problem(response),
            answer=response.text,
        )
        return response, refused

    @contextmanager
    def leaving_client(
        self, sample: Sample, *, preset: str | None = None, mode: str | None = None
    ) -> Iterator[socket.socket]:
        """Send this door's request on a raw socket and close it on exit, whatever the server did:
        a client that goes away. The socket is yielded (a stream's first bytes can be read)."""
        request = self.request(sample, preset=preset, mode=mode)
        request.read()  # a multipart body is a stream until read
        url = request.url
        sock = socket.create_connection((url.host, url.port or 80), timeout=_HTTP_TIMEOUT_S)
        try:
            target = url.raw_path.decode("ascii")
            head = f"{request.method} {target} HTTP/1.1\r\n"
            head += "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
            sock.sendall(head.encode("latin-1") + b"\r\n" + request.content)
            yield sock
        finally:
            sock.close()


def _b64(sample: Sample) -> str:
    return base64.b64encode(sample.data).decode("ascii")


class NativeDoor(HttpDoor):
    """``POST /v1/ocr``, JSON with ``image_base64`` or a multipart ``file`` upload."""

    OUTPUTS = ("markdown", "blocks", "raw")

    def __init__(self, name: str, root: str, *, multipart: bool) -> None:
        super().__init__(name, root)
        self.multipart = multipart
        self.source_field = "file" if multipart else "image_base64"

    def request(
        self, sample: Sample, *, preset: str | None = None, prompt: str | None = None, mode: str | None = None
    ) -> httpx.Request:
        options = {
            key: value for key, value in (("preset", preset), ("prompt", prompt), ("mode", mode)) if value
        }
        url = f"{self.root}/v1/ocr"
        if self.multipart:
            files = {"file": (sample.name, sample.data, sample.media_type)}
            data = {**options, "outputs": ",".join(self.OUTPUTS)}
            return httpx.Request("POST", url, files=files, data=data)
        return httpx.Request(
            "POST", url, json={"image_base64": _b64(sample), "outputs": list(self.OUTPUTS), **options}
        )

    def ocr(
        self, sample: Sample, *, preset: str | None = None, prompt: str | None = None, mode: str | None = None
    ) -> Outcome:
        response, refused = self.send(sample, preset=preset, prompt=prompt, mode=mode)
        if refused is not None:
            return refused
        headers = _lower(response.headers)
        body = response.json()
        pages = tuple(
            PageOutcome(int(page["page"]), bool(page["ok"]), _page_error_code(page)) for page in body["pages"]
        )
        one = body["pages"][0] if len(body["pages"]) == 1 and body["pages"][0]["ok"] else None
        return Outcome(
            self.name,
            ok=not body["failed_pages"],
            status=response.status_code,
            headers=headers,
            raw=one["raw"] if one else None,
            blocks=reading_of(one["blocks"]) if one else None,
            markdown=without_link_targets(one["markdown"]) if one else None,
            prompt=body["prompt"],
            usage=_usage(body["usage"]),
            pages=pages,
            answer=response.text,
        )


class PredictDoor(HttpDoor):
    """``POST /predict`` (``path`` ``/v1/models/model:predict`` through Truss's proxy)."""

    one_image = True
    source_field = "image_base64"

    def __init__(self, name: str, root: str, *, path: str = "/predict") -> None:
        super().__init__(name, root)
        self.path = path

    def request(
        self, sample: Sample, *, preset: str | None = None, prompt: str | None = None, mode: str | None = None
    ) -> httpx.Request:
        body: dict[str, Any] = {"image_base64": _b64(sample)}
        # The seed contract's one text field carries a preset name or a free prompt.
        text = preset if preset is not None else prompt
        if text is not None:
            body["prompt"] = text
        if mode is not None:
            body["mode"] = mode
        return httpx.Request("POST", f"{self.root}{self.path}", json=body)

    def ocr(
        self, sample: Sample, *, preset: str | None = None, prompt: str | None = None, mode: str | None = None
    ) -> Outcome:
        response, refused = self.send(sample, preset=preset, prompt=prompt, mode=mode)
        if refused is not None:
            return refused
        headers = _lower(response.headers)
        body = response.json()
        return Outcome(
            self.name,
            ok=True,
            status=response.status_code,
            headers=headers,
            raw=body["raw_output"],
            blocks=reading_of(body["blocks"]),
            markdown=without_link_targets(body["markdown"]),
            prompt=body["prompt_used"],
            usage=_usage(body["usage"]),
            pages=(PageOutcome(1, True),),
            answer=response.text,
        )


class ChatDoor(HttpDoor):
    """``POST /v1/chat/completions`` through the official ``openai`` client."""

    one_image = True
    source_field = CHAT_IMAGE_FIELD

    def __init__(self, name: str, root: str, *, stream: bool) -> None:
        super().__init__(name, root)
        self.streams = stream

    def invalid_input_status(self, status: int) -> int:
        # The route's documented convention (routes_openai): every invalid request is answered
        # 400, the status OpenAI clients map to BadRequestError, with dsocr's precise code.
        return 400 if 400 <= status < 500 and status != 404 else status

    def _body(
        self, sample: Sample, *, preset: str | None, prompt: str | None, mode: str | None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        url = f"data:{sample.media_type};base64,{_b64(sample)}"
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": url}}]
        text = preset if preset is not None else prompt
        if text is not None:
            content.append({"type": "text", "text": text})
        extra = {"mode": mode} if mode is not None else {}
        return [{"role": "user", "content": content}], extra

    def request(
        self, sample: Sample, *, preset: str | None = None, prompt: str | None = None, mode: str | None = None
    ) -> httpx.Request:
        messages, extra = self._body(sample, preset=preset, prompt=prompt, mode=mode)
        body: dict[str, Any] = {"messages": messages, "model": MODEL, **extra}
        if self.streams:
            body.update({"stream": True, "stream_options": {"include_usage": True}})
        return httpx.Request("POST", f"{self.root}/v1/chat/completions", json=body)

    def ocr(
        self, sample: Sample, *, preset: str | None = None, prompt: str | None = None, mode: str | None = None
    ) -> Outcome:
        messages, extra = self._body(sample, preset=preset, prompt=prompt, mode=mode)
        with openai.OpenAI(
            base_url=f"{self.root}/v1", api_key="unused", max_retries=0, timeout=_HTTP_TIMEOUT_S
        ) as client:
            try:
                if self.streams:
                    return self._streamed(client, messages, extra)
                return self._completed(client, messages, extra)
            except openai.APIStatusError as exc:
                response = exc.response
                return Outcome(
                    self.name,
                    ok=False,
                    status=response.status_code,
                    headers=_lower(response.headers),
                    error=_http_problem(httpx.Response(response.status_code, content=response.content)),
                    answer=response.text,
                )

    def _completed(self, client: openai.OpenAI, messages: Any, extra: dict[str, Any]) -> Outcome:
        raw_response = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, extra_body=extra or None
        )
        completion = raw_response.parse()
        content = completion.choices[0].message.content or ""
        return Outcome(
            self.name,
            ok=True,
            status=raw_response.status_code,
            headers=_lower(raw_response.headers),
            raw=content,
            usage=self._usage(completion.usage),
            pages=(PageOutcome(1, True),),
            answer=completion.model_dump_json(),
        )

    def _streamed(self, client: openai.OpenAI, messages: Any, extra: dict[str, Any]) -> Outcome:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra or None,
        )
        status, headers = stream.response.status_code, _lower(stream.response.headers)
        pieces: list[str] = []
        usage: Usage | None = None
        try:
            with stream:
                for chunk in stream:
                    for choice in chunk.choices:
                        pieces.append(choice.delta.content or "")
                    if chunk.usage is not None:
                        usage = self._usage(chunk.usage)
        except openai.APIStatusError:
            raise
        except openai.APIError as exc:
            # An error event after the first chunk: the status was already 200.
            body = exc.body if isinstance(exc.body, Mapping) else {}
            problem = Problem(
                code=body.get("code"), field=body.get("field"), message=exc.message, envelope=body or None
            )
            return Outcome(
                self.name, ok=False, status=status, headers=headers, error=problem, answer=json.dumps(body)
            )
        raw = "".join(pieces)
        return Outcome(
            self.name,
            ok=True,
            status=status,
            headers=headers,
            raw=raw,
            usage=usage,
            pages=(PageOutcome(1, True),),
            answer=raw,
        )

    @staticmethod
    def _usage(usage: Any) -> Usage | None:
        if usage is None:
            return None
        details = usage.prompt_tokens_details
        image_tokens = getattr(details, "image_tokens", None) if details is not None else None
        return Usage(usage.prompt_tokens, usage.completion_tokens, image_tokens)


# ---------------------------------------------------------------- processes


def _process_env(config_env: Mapping[str, str]) -> dict[str, str]:
    # Only the configuration's DSOCR_* variables: a developer's shell must not change results.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DSOCR_", "RAY_ADDRESS"))}
    return {**clean, **config_env}


def _options(preset: str | None, prompt: str | None, mode: str | None) -> list[str]:
    args: list[str] = []
    if preset is not None:
        args += ["--preset", preset]
    if prompt is not None:
        args += ["--prompt", prompt]
    if mode is not None:
        args += ["--mode", mode]
    return args


_FIELD_SUFFIX = re.compile(r"\(([\w.\[\]-]+)\)$")
_OPTION = re.compile(r"--([a-z][a-z-]*)")


def _cli_problem(stderr: str) -> Problem | None:
    """The first ``error: …`` line: its message, and the field it names — the ``(field)`` the
    CLI appends, else the first ``--option`` the message mentions."""
    for line in stderr.splitlines():
        if line.startswith("error: "):
            message = line.removeprefix("error: ").strip()
            suffix = _FIELD_SUFFIX.search(message)
            option = _OPTION.search(message)
            named = suffix.group(1) if suffix else option.group(1) if option else None
            return Problem(code=None, field=named, message=message)
    return None


class CliDoor(Door):
    """``dsocr ocr FILE --format json`` as a process."""

    source_field = "source"

    def __init__(self, name: str, work: Path, env: Mapping[str, str]) -> None:
        super().__init__(name)
        self.work = work
        self.env = _process_env(env)

    def ocr(
        self, sample: Sample, *, preset: str | None = None, prompt: str | None = None, mode: str | None = None
    ) -> Outcome:
        source = self.work / sample.name
        source.write_bytes(sample.data)
        completed = subprocess.run(
            [
                *(sys.executable, "-m", "dsocr", "ocr", str(source), "--format", "json", "--quiet"),
                *_options(preset, prompt, mode),
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=_PROCESS_TIMEOUT_S,
            check=False,
        )
        answer = f"stdout: {completed.stdout[:1000]}\nstderr: {completed.stderr}"
        try:
            document = json.loads(completed.stdout)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            return Outcome(
                self.name,
                ok=False,
                exit_code=completed.returncode,
                error=_cli_problem(completed.stderr),
                answer=answer,
            )
        pages = tuple(
            PageOutcome(int(page["page"]), not page.get("error"), _page_error_code(page))
            for page in document["pages"]
        )
        one = document["pages"][0] if len(document["pages"]) == 1 and pages[0].ok else None
        return Outcome(
            self.name,
            ok=completed.returncode == 0,
            exit_code=completed.returncode,
            error=_cli_problem(completed.stderr),
            blocks=reading_of(one["blocks"]) if one else None,
            markdown=without_link_targets(one["markdown"]) if one else None,
            prompt=document["prompt"],
            # One page: the page's usage, with its vision tokens; a document: the totals.
            usage=_usage(one["usage"] if one else document["usage"]),
            pages=pages,
            answer=answer,
        )


class BatchDoor(Door):
    """``dsocr batch IN --out OUT`` as a process, on a folder holding the one file."""

    def __init__(self, name: str, work: Path, env: Mapping[str, str]) -> None:
        super().__init__(name)
        self.work = work
        self.env = _process_env(env)
        self._runs = 0

    def ocr(
        self, sample: Sample, *, preset: str | None = None, prompt: str | None = None, mode: str | None = None
    ) -> Outcome:
        self._runs += 1
        inputs, out = self.work / f"in-{self._runs}", self.work / f"out-{self._runs}"
        inputs.mkdir()
        (inputs / sample.name).write_bytes(sample.data)
        completed = subprocess.run(
            [
                *(sys.executable, "-m", "dsocr", "batch", str(inputs), "--out", str(out), "--quiet"),
                *_options(preset, prompt, mode),
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=_PROCESS_TIMEOUT_S,
            check=False,
        )
        answer = f"stderr: {completed.stderr}"
        summary_path = out / "summary.json"
        if not summary_path.exists():
            # Refused before any file was looked at: the error is on stderr, as with `dsocr ocr`.
            return Outcome(
                self.name,
                ok=False,
                exit_code=completed.returncode,
                error=_cli_problem(completed.stderr),
                answer=answer,
            )
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        answer += f"\nsummary: {json.dumps(summary)}"
        records = {
            int(path.stem): json.loads(path.read_text(encoding="utf-8"))
            for path in (out / sample.stem / "pages").glob("*.json")
        }
        pages = tuple(
            PageOutcome(number, not record.get("error"), _page_error_code(record))
            for number, record in sorted(records.items())
        )
        error: Problem | None = None
        for failed in summary["failed_files"]:
            record = records.get(failed["page"]) if failed["page"] is not None else None
            page_error = record.get("error") if record is not None else None
            error = Problem(
                code=failed["reason"],
                field=page_error.get("field") if page_error else None,
                message=failed["message"],
            )
            break
        one = records.get(1) if len(records) == 1 and pages[0].ok else None
        return Outcome(
            self.name,
            ok=completed.returncode == 0,
            exit_code=completed.returncode,
            error=error,
            blocks=reading_of(one["blocks"]) if one else None,
            markdown=without_link_targets(one["markdown"]) if one else None,
            usage=_usage(one["usage"]) if one else None,
            pages=pages,
            answer=answer,
        )
