"""Write docs/api.md, the HTTP API reference, from the server's own OpenAPI document.

    .venv/bin/python scripts/api_reference.py            # rewrite docs/api.md
    .venv/bin/python scripts/api_reference.py --check    # exit 1 if docs/api.md is out of date

The document is the one a running server answers at ``/openapi.json`` (the app built with the fake
engine). Fields, types, defaults, enums, statuses and descriptions come from it; the values of
``mode``, ``preset`` and ``outputs`` come from the registries the server validates them against
(:mod:`dsocr.modes`, :mod:`dsocr.prompts`, :mod:`dsocr.outputs`). Nothing is written by hand, so the
reference changes when the API does, and ``tests/api/test_api_reference.py`` fails until it is
regenerated.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPOSITORY / "docs" / "api.md"
COMMAND = "python scripts/api_reference.py"

Schema = Mapping[str, Any]

_HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
_NULL = {"type": "null"}
_REF_PREFIX = "#/components/schemas/"
_BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))
# Fields whose values a registry defines, and the section of this page that lists them.
_REGISTRY_SECTIONS = {"outputs": "Outputs", "preset": "Prompt presets", "mode": "Resolution modes"}


def build_document() -> dict[str, Any]:
    """The OpenAPI document of the app with the fake engine, whatever ``DSOCR_*`` the shell sets."""
    for name in [name for name in os.environ if name.startswith("DSOCR_")]:
        del os.environ[name]
    from dsocr.server.app import create_app
    from dsocr.settings import Settings

    return create_app(Settings(engine={"kind": "fake"})).openapi()


# ---------------------------------------------------------------- the registries behind three fields


def _code_list(values: Sequence[str]) -> str:
    return ", ".join(f"`{value}`" for value in values)


def _mode_names() -> list[str]:
    from dsocr.modes import MODELS

    return list(dict.fromkeys(name for profile in MODELS for name in profile.modes))


@functools.cache
def _registry_values() -> dict[str, list[str]]:
    """The values of ``mode``, ``preset`` and ``outputs``, from the registries that check them."""
    from dsocr.outputs import SELECTABLE
    from dsocr.prompts import PRESETS

    return {"mode": _mode_names(), "preset": list(PRESETS), "outputs": list(SELECTABLE)}


@functools.cache
def _default_by_registry() -> dict[str, str]:
    """What the server uses for these fields when they are not sent and the schema has no default."""
    from dsocr.modes import MODELS
    from dsocr.outputs import DEFAULT_OUTPUTS
    from dsocr.prompts import DEFAULT_PRESET

    return {
        "mode": f"`{json.dumps(MODELS[0].default_mode)}`",
        "preset": f"`{json.dumps(DEFAULT_PRESET)}`",
        "outputs": f"`{json.dumps(list(DEFAULT_OUTPUTS))}`",
    }


def _openai_chat_fields() -> frozenset[str]:
    """The request fields OpenAI's chat completions API defines (from the official client's types)."""
    from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming

    return (
        CompletionCreateParamsStreaming.__required_keys__ | CompletionCreateParamsStreaming.__optional_keys__
    )


# ---------------------------------------------------------------- schema → text


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    kept = re.sub(r"[^\w\- ]", "", heading.lower())
    return kept.replace(" ", "-")


def _ref_name(schema: Schema) -> str | None:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
        return ref[len(_REF_PREFIX) :]
    return None


def _prose(text: str) -> str:
    """A docstring as markdown on one line: reST literals and roles as code."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return " ".join(text.replace("``", "`").split())


def _row(cells: Sequence[str]) -> str:
    """A table row; a ``|`` inside a cell, code spans included, is escaped as GitHub's tables need."""
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _bounds(schema: Schema) -> str:
    parts = []
    for key, sign in _BOUNDS:
        if key in schema:
            parts.append(f"{sign} {_number(schema[key])}")
    if "minLength" in schema:
        parts.append(f"at least {schema['minLength']} characters")
    if "maxLength" in schema:
        parts.append(f"at most {schema['maxLength']} characters")
    return ", ".join(parts)


def _type(schema: Schema, *, keep_null: bool = False) -> str:
    """A short description of a schema's type: ``integer (≥ 1)``, ``array of string``, a shape's link.

    ``null`` is left out unless ``keep_null``: in a request it means "not given", as leaving the
    field out does; in a response it is a value the client sees.
    """
    name = _ref_name(schema)
    if name is not None:
        return f"[`{name}`](#{_anchor(name)})"
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            variants = [_type(v, keep_null=keep_null) for v in schema[key] if keep_null or v != _NULL]
            return " or ".join(dict.fromkeys(variants))
    kind = schema.get("type")
    if kind == "array":
        text = f"array of {_type(schema.get('items', {}))}"
    elif kind == "object" or (kind is None and "properties" in schema):
        text = "object"
    elif kind is None:
        text = "any"
    elif kind == "null":
        text = "null"
    else:
        text = str(kind)
    bounds = _bounds(schema)
    return f"{text} ({bounds})" if bounds else text


def _enum(schema: Schema) -> list[Any]:
    """The values a schema (or its items, or one of its variants) is limited to."""
    if "enum" in schema:
        return list(schema["enum"])
    if "items" in schema:
        return _enum(schema["items"])
    for key in ("anyOf", "oneOf"):
        for variant in schema.get(key, ()):
            values = _enum(variant)
            if values:
                return values
    return []


def _default(name: str, schema: Schema, required: Sequence[str]) -> str:
    if name in required:
        return "required"
    if "default" in schema and schema["default"] is not None:
        return f"`{json.dumps(schema['default'])}`"
    return _default_by_registry().get(name, "—")


def _allowed(name: str, schema: Schema) -> str:
    """The schema's enum, else the registry's values; for registry fields, a link to their section."""
    values = [str(value) for value in _enum(schema)] or _registry_values().get(name, [])
    section = _REGISTRY_SECTIONS.get(name)
    if section is None:
        return _code_list(values)
    return f"{_code_list(values)} (see [{section}](#{_anchor(section)}))"


def _exactly_one(schema: Schema) -> list[str]:
    """The fields of a ``oneOf`` of single required fields: "give exactly one of these"."""
    names = []
    for branch in schema.get("oneOf", ()):
        required = branch.get("required", [])
        if len(required) != 1 or set(branch) - {"required", "properties"}:
            return []
        names.append(required[0])
    return names


def _field_rows(schema: Schema, names: Sequence[str] | None = None) -> Iterator[str]:
    properties: Mapping[str, Schema] = schema.get("properties", {})
    required: list[str] = schema.get("required", [])
    for name, field in properties.items():
        if names is not None and name not in names:
            continue
        description = _prose(field.get("description", ""))
        yield _row(
            [f"`{name}`", _type(field), _default(name, field, required), _allowed(name, field), description]
        )


def _request_table(schema: Schema, names: Sequence[str] | None = None) -> list[str]:
    return [
        "| field | type | default | allowed values | description |",
        "| --- | --- | --- | --- | --- |",
        *_field_rows(schema, names),
    ]


# ---------------------------------------------------------------- the document, section by section


class _Reference:
    """Renders one OpenAPI document; remembers the shapes the routes refer to, for the last section."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self.components: Mapping[str, Schema] = document.get("components", {}).get("schemas", {})
        # The shapes the routes refer to, in the order first met; a request body's own shape is
        # rendered in its route's section instead.
        self.shapes: list[str] = []

    def resolve(self, schema: Schema) -> Schema:
        name = _ref_name(schema)
        return schema if name is None else self.components[name]

    def note_refs(self, schema: Any) -> None:
        """Every shape ``schema`` refers to, in the order first met, nested ones included."""
        if isinstance(schema, Mapping):
            name = _ref_name(schema)
            if name is not None and name not in self.shapes:
                self.shapes.append(name)
                self.note_refs(self.components.get(name, {}))
            for value in schema.values():
                self.note_refs(value)
        elif isinstance(schema, list):
            for value in schema:
                self.note_refs(value)

    def operations(self) -> Iterator[tuple[str, str, Mapping[str, Any]]]:
        for path, item in self.document.get("paths", {}).items():
            for method in _HTTP_METHODS:
                if method in item:
                    yield method.upper(), path, item[method]

    def render(self) -> str:
        info = self.document.get("info", {})
        lines = [
            "# HTTP API reference",
            "",
            f"Generated from the server's OpenAPI document by `{COMMAND}`: edit the code, not",
            "this file. A running server answers the same document at `/openapi.json`, with Swagger UI",
            "at `/docs`.",
            "",
        ]
        if info.get("description"):
            lines += [_prose(info["description"]), ""]
        lines += ["| route | what |", "| --- | --- |"]
        for method, path, operation in self.operations():
            heading = f"`{method} {path}`"
            lines.append(_row([f"[{heading}](#{_anchor(heading)})", _prose(operation.get("summary", ""))]))
        lines.append("")
        for method, path, operation in self.operations():
            lines += self.operation(method, path, operation)
        lines += self.registries()
        lines += self.shape_sections()
        return "\n".join(lines).rstrip("\n") + "\n"

    def operation(self, method: str, path: str, operation: Mapping[str, Any]) -> list[str]:
        about = operation.get("description") or operation.get("summary", "")
        lines = [f"## `{method} {path}`", "", _prose(about), ""]
        parameters = operation.get("parameters", [])
        if parameters:
            lines += ["| parameter | in | type | description |", "| --- | --- | --- | --- |"]
            for parameter in parameters:
                description = _prose(parameter.get("description", ""))
                kind = _type(parameter.get("schema", {}))
                lines.append(_row([f"`{parameter['name']}`", parameter["in"], kind, description]))
            lines.append("")
        body = operation.get("requestBody", {}).get("content", {})
        for media_type, content in body.items():
            lines += self.request_body(media_type, content.get("schema", {}), operation)
        lines += self.responses(operation.get("responses", {}))
        return lines

    def request_body(self, media_type: str, schema: Schema, operation: Mapping[str, Any]) -> list[str]:
        resolved = self.resolve(schema)
        self.note_refs(resolved.get("properties", {}))
        lines = [f"### Request body: `{media_type}`", ""]
        exactly_one = _exactly_one(resolved)
        if exactly_one:
            lines += [f"Give exactly one of {_code_list(exactly_one)}.", ""]
        if "openai" not in operation.get("tags", ()):
            return [*lines, *_request_table(resolved), ""]
        # An OpenAI-compatible route: OpenAI's own fields by name, dsocr's additions in full.
        openai_fields = _openai_chat_fields()
        names = list(resolved.get("properties", {}))
        shared = [name for name in names if name in openai_fields]
        extra = [name for name in names if name not in openai_fields]
        lines += [
            f"OpenAI's fields, as its API defines them: {_code_list(shared)}.",
            "",
            "Fields OpenAI's API does not define (the official client sends them in `extra_body`):",
            "",
            *_request_table(resolved, extra),
            "",
            "A parameter the route cannot honour, OpenAI's or vLLM's, is refused with 400 (`param`",
            "names it) unless it carries its no-op value; see the 400 row below.",
            "",
        ]
        return lines

    def responses(self, responses: Mapping[str, Any]) -> list[str]:
        lines = ["### Responses", "", "| status | body | headers | when |", "| --- | --- | --- | --- |"]
        for status, response in responses.items():
            bodies = []
            for media_type, content in response.get("content", {}).items():
                schema = content.get("schema", {})
                self.note_refs(schema)
                if _ref_name(schema) is not None:
                    bodies.append(_type(schema))
                elif media_type == "text/event-stream":
                    bodies.append("server-sent events (`text/event-stream`)")
                elif schema.get("type") == "object":
                    bodies.append(f"JSON object (`{media_type}`)")
                else:
                    bodies.append(f"`{media_type}`")
            headers = _code_list(list(response.get("headers", {})))
            lines.append(_row([status, "; ".join(bodies), headers, _prose(response.get("description", ""))]))
        return [*lines, ""]

    def registries(self) -> list[str]:
        from dsocr.modes import MODELS
        from dsocr.outputs import DEFAULT_OUTPUTS, OUTPUTS
        from dsocr.prompts import PRESETS

        sections = _REGISTRY_SECTIONS
        lines = [f"## {sections['outputs']}", "", "What `outputs` may list; each is a field of a page.", ""]
        lines += ["| output | default | what |", "| --- | --- | --- |"]
        for name, output in OUTPUTS.items():
            if output.selectable:
                default = "yes" if name in DEFAULT_OUTPUTS else ""
                lines.append(_row([f"`{name}`", default, _prose(output.description)]))
        lines += ["", f"## {sections['preset']}", "", "A preset name is the same prompt on every route.", ""]
        lines += ["| preset | prompt | models |", "| --- | --- | --- |"]
        for name, prompt in PRESETS.items():
            models = ", ".join(f"`{p.model_id}`" for p in MODELS if name in p.presets)
            lines.append(_row([f"`{name}`", f"`{json.dumps(prompt)[1:-1]}`", models]))
        lines += ["", f"## {sections['mode']}", ""]
        lines += ["| model | mode | global view | tiles |", "| --- | --- | --- | --- |"]
        for profile in MODELS:
            for mode in profile.modes.values():
                default = " (default)" if mode.name == profile.default_mode else ""
                tiles = (
                    f"{profile.min_crops}–{profile.max_crops} of {mode.image_size}², by the page's shape"
                    if mode.crop_mode
                    else "none"
                )
                size = f"{mode.base_size}²"
                lines.append(_row([f"`{profile.model_id}`", f"`{mode.name}`{default}", size, tiles]))
        return [*lines, ""]

    def shape_sections(self) -> list[str]:
        lines = ["## Shapes", ""]
        for name in self.shapes:
            schema = self.components[name]
            lines += [f"### `{name}`", ""]
            if schema.get("description"):
                lines += [_prose(schema["description"]), ""]
            required: list[str] = schema.get("required", [])
            lines += ["| field | type | required | description |", "| --- | --- | --- | --- |"]
            for field, field_schema in schema.get("properties", {}).items():
                kind = _type(field_schema, keep_null=True)
                values = _enum(field_schema)
                if values:
                    kind = f"{kind}: {_code_list([str(value) for value in values])}"
                description = _prose(field_schema.get("description", ""))
                lines.append(_row([f"`{field}`", kind, "yes" if field in required else "", description]))
            lines.append("")
        return lines


def render(document: Mapping[str, Any]) -> str:
    """docs/api.md for an OpenAPI document."""
    return _Reference(document).render()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="default: docs/api.md")
    args = parser.parse_args(argv)
    text = render(build_document())
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(
                f"{args.output} is out of date with the server's OpenAPI document; run: {COMMAND}",
                file=sys.stderr,
            )
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
