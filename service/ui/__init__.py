"""The web dashboard: ``/ui`` (one static page, plain HTML/CSS/JS shipped as package data).

The page and its files are public; every figure it shows comes from the JSON API, called from the
browser with the API key the user enters (kept in ``sessionStorage``, sent as
``Authorization: Bearer``). ``/`` redirects to ``/ui``. The page is told whether the server wants
a key (``<meta name="optpilot-auth">``), so it asks for one before calling the API.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from service.core.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"
AUTH_PLACEHOLDER = "{{auth}}"

# Scripts and styles from this origin only; the report is rendered into a sandboxed srcdoc
# frame (no script) whose inline styles and SVG need 'unsafe-inline' styles.
UI_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
          "img-src 'self' data: blob:; frame-src 'self' blob: data:; connect-src 'self'; "
          "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'")

router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=1)
def _index_template() -> str:
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")


def index_html(auth_required: bool) -> str:
    return _index_template().replace(AUTH_PLACEHOLDER, "required" if auth_required else "none")


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


@router.get("/ui")
def dashboard(request: Request) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    return HTMLResponse(index_html(settings.auth_enabled),
                        headers={"Content-Security-Policy": UI_CSP, "Cache-Control": "no-cache",
                                 "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "no-referrer"})


@router.get("/ui/")
def dashboard_slash() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)


def install(app: FastAPI) -> None:
    """Add the dashboard's routes and its static files (``/ui/static/...``) to ``app``."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
