"""The FastAPI application: ``create_app(settings)``; ``uvicorn service.app:create_app --factory``.

One SQLAlchemy engine per app (so per process), made when the app is created and disposed when
it shuts down, unless the caller passes its own ``engine`` (then the caller disposes it). The app
does not migrate the database: run ``service.core.db.upgrade(url)`` first (``GET /readyz`` says 503
until the schema is at head).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Depends, FastAPI
from sqlalchemy import Engine

from service import ui
from service.api import docs
from service.api.routes import catalog, health, jobs, recommendations, reports, results
from service.core import db, errors, metrics
from service.core.auth import require_api_key
from service.core.errors import database_error_text, database_unavailable
from service.core.limits import BodySizeLimitMiddleware
from service.core.route_templates import RouteTemplates
from service.core.settings import Settings, get_settings
from service.core.storage import storage_for_app
from service.jobs.leases import reap_all

logger = logging.getLogger("optpilot.service")

# Routers under /v1; every route in them requires the API key when keys are configured.
# Add new resources here (e.g. the jobs router).
V1_ROUTERS: list[APIRouter] = [
    recommendations.router,
    jobs.router,
    reports.router,
    catalog.router,
    results.router,
]
# Routers that handle authentication themselves (/healthz is open; /readyz and /metrics ask for
# the key). The dashboard (/ui, and / redirecting to it) is public: its data comes from the API.
OTHER_ROUTERS: list[APIRouter] = [health.router, metrics.router]

DESCRIPTION = """\
optpilot recommends a training optimizer for a described model and task, tunes it with Optuna
on GPU or CPU workers, and keeps every result for later queries.

Authentication: `Authorization: Bearer <key>` when the server has API keys configured, on every
route but `/healthz` and the documentation (`/docs`, `/redoc`, `/openapi.json`) and dashboard
(`/ui`) pages, which are public. Errors are `application/problem+json` (RFC 9457).

Also served: a job's HTML report (`/v1/jobs/{id}/report`), a web dashboard at `/ui`, and
Prometheus metrics at `/metrics`.
"""


class LeaseSweeper:
    """Fails client-evaluated trials whose lease expired, every ``interval_s`` (requests for the
    same job reap too; this catches jobs nobody asks about)."""

    def __init__(self, app: FastAPI, interval_s: float) -> None:
        self._app, self._interval_s = app, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lease-sweeper")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                with self._app.state.sessionmaker() as session:
                    reap_all(session, storage_for_app(self._app))
            except Exception as exc:  # the database may be unavailable; try again next time
                if database_unavailable(exc):
                    logger.warning("lease sweep skipped (database unavailable): %s",
                                   database_error_text(exc))
                else:
                    logger.exception("lease sweep failed")


def _version() -> str:
    try:
        return version("optpilot")
    except PackageNotFoundError:
        return "0.0.0"


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> FastAPI:
    """The API app for ``settings`` (default: from the environment).

    ``engine``: share an existing engine (e.g. with in-process workers); the caller owns it.
    """
    settings = settings if settings is not None else get_settings()
    owns_engine = engine is None
    bound = engine if engine is not None else db.create_engine_for(
        settings.database_url, sqlite_busy_timeout_s=settings.sqlite_busy_timeout_s
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = LeaseSweeper(app, settings.reap_interval_s)
        sweeper.start()
        try:
            yield
        finally:
            sweeper.stop()
            storage = getattr(app.state, "optuna_storage", None)
            if storage is not None:
                storage.engine.dispose()
            if owns_engine:
                bound.dispose()

    app = FastAPI(
        title="optpilot",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # service.api.docs serves /docs and /redoc with local assets
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = bound
    app.state.sessionmaker = db.make_sessionmaker(bound)
    app.state.schema_head = db.head_revision()
    app.state.metrics = metrics.Metrics(bound)
    app.state.route_templates = RouteTemplates(app)  # a 405's Allow header (service.core.errors)

    errors.install(app)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    # Added last, so outermost: it times and counts every request, 413s included.
    app.add_middleware(metrics.MetricsMiddleware, metrics=app.state.metrics, api=app)
    for router in OTHER_ROUTERS:
        app.include_router(router)
    for router in V1_ROUTERS:
        app.include_router(router, dependencies=[Depends(require_api_key)])
    ui.install(app)
    docs.install(app, auth_enabled=settings.auth_enabled)
    return app
