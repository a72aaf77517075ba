"""``GET /docs`` (Swagger UI) and ``GET /openapi.json``: the API's documentation, from the package.

Swagger UI's script and styles are shipped in ``dsocr/static/vendor/swagger-ui`` (vendored from
npm's ``swagger-ui-dist`` by ``tests/web/vendor.mjs``), so the page works offline and loads
nothing from elsewhere. With API keys set, both routes need a key unless
``DSOCR_SERVER__OPEN_DOCS`` is on; a browser is asked for it (the key is the password of the
login prompt) and resends it to this server afterwards, which is what Swagger's "Try it out" uses.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse

from dsocr.server.deps import require_api_key_for_docs

__all__ = ["router"]

router = APIRouter(dependencies=[Depends(require_api_key_for_docs)])

# Only this server's own files; Swagger UI sets inline styles and draws its icons from data: URLs.
_DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>dsocr API</title>
  <link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
  <link rel="stylesheet" href="/static/vendor/swagger-ui/swagger-ui.css">
  <script src="/static/vendor/swagger-ui/swagger-ui-bundle.js" defer></script>
  <script src="/static/docs.js" defer></script>
</head>
<body>
  <div id="swagger-ui"></div>
</body>
</html>
"""


@router.get("/openapi.json", include_in_schema=False)
async def openapi_schema(request: Request) -> JSONResponse:
    """The OpenAPI schema of this server."""
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False)
async def docs_page() -> HTMLResponse:
    """Swagger UI on this server's schema."""
    return HTMLResponse(
        _DOCS_PAGE, headers={"Content-Security-Policy": _DOCS_CSP, "Cache-Control": "no-cache"}
    )
