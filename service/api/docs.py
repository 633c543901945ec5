"""The API's documentation pages: ``/docs`` (Swagger UI), ``/redoc`` (ReDoc) and the OpenAPI
document at ``/openapi.json``, all served by the service itself, so they work offline.

Swagger UI's and ReDoc's files come from the ``fastapi-offline`` package (a dependency: pip
installs and updates them, with their licences) and are served under ``/docs/assets``; nothing is
fetched from a CDN, at run time or in the browser.

These routes are public even when API keys are set: the description of the API is the same for
everyone and reveals no data, and a browser opening ``/docs`` cannot send a bearer key. Swagger
UI's "Authorize" button takes the key for the requests it sends.

The OpenAPI document states what the server enforces: with no key configured it declares no
security scheme and no 401 answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS_URL = "/docs/assets"
OPENAPI_URL = "/openapi.json"


def install(app: FastAPI, *, auth_enabled: bool) -> None:
    """Serve ``/docs``, ``/redoc`` and their assets; make ``app.openapi()`` match the server's
    authentication. Create ``app`` with ``docs_url=None, redoc_url=None``."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_URL, title=f"{title} - Swagger UI",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=OPENAPI_URL, title=f"{title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png", with_google_fonts=False)

    if not auth_enabled:
        build = app.openapi

        def openapi_without_auth() -> dict[str, Any]:
            if app.openapi_schema is None:
                app.openapi_schema = without_auth(build())
            return app.openapi_schema

        app.openapi = openapi_without_auth  # type: ignore[method-assign]


def without_auth(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with no security requirement, scheme or 401 answer (auth is off)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.pop("security", None)
            operation.get("responses", {}).pop("401", None)
    components = document.get("components", {})
    components.pop("securitySchemes", None)
    return document
