"""Reading ``/v1/ocr``'s body, JSON or multipart, into its validated fields and its one source.

``POST /v1/jobs`` takes the same body (its model adds ``callback_url``), so both read it here.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from dsocr.errors import InvalidInput, UnsupportedMediaType
from dsocr.inputs import BytesSource, Source
from dsocr.inputs.sources import SourceKind, one_source
from dsocr.server.runs import read_json
from dsocr.server.schemas import OcrRequest, parse_outputs

__all__ = ["parse_ocr_body"]

Body = TypeVar("Body", bound=OcrRequest)

# Multipart: one file plus the handful of fields the body has.
_MAX_FORM_FIELDS = 32
_SOURCES: dict[str, SourceKind] = {"image_url": "url", "image_base64": "base64", "path": "path"}


def _validated(schema: type[Body], data: dict[str, Any], *, loc_prefix: str) -> Body:
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        errors = [{**error, "loc": (loc_prefix, *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


async def parse_ocr_body(request: Request, schema: type[Body]) -> tuple[Body, Source]:
    """Body (JSON or multipart, the file as ``file``) → the validated fields and their one source."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=_MAX_FORM_FIELDS)
        try:
            fields: dict[str, Any] = {}
            upload: UploadFile | None = None
            listed: list[str] = []
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key != "file":
                        raise InvalidInput(f"upload the file as field 'file', not {key!r}", field=key)
                    upload = value
                elif key == "outputs":
                    listed.append(value)
                else:
                    fields[key] = value
            fields["outputs"] = parse_outputs(listed)
            body = _validated(schema, fields, loc_prefix="form")
            data = await upload.read() if upload is not None else None
        finally:
            await form.close()
        if upload is None:
            return body, one_source(body.model_dump(), {"file": "bytes", **_SOURCES})
        if body.image_url or body.image_base64 or body.path:
            raise InvalidInput(
                "send either a file upload or image_url/image_base64/path, not both", field="file"
            )
        assert data is not None
        source = BytesSource(data, filename=upload.filename, content_type=upload.content_type, field="file")
        return body, source
    if content_type in ("application/json", "") or content_type.endswith("+json"):
        body = _validated(schema, await read_json(request), loc_prefix="body")
        return body, one_source(body.model_dump(), {"file": "bytes", **_SOURCES})
    raise UnsupportedMediaType(
        f"send application/json or multipart/form-data, not {content_type!r}", field="content-type"
    )
