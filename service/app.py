"""The FastAPI application: ``create_app(settings)``; ``uvicorn service.app:create_app --factory``.

One SQLAlchemy engine per app (so per process), made when the app is created and disposed when
it shuts down, unless the caller passes its own ``engine`` (then the caller disposes it). The app
does not migrate the database: run ``service.core.db.upgrade(url)`` first (``GET /readyz`` says 503
until the schema is at head).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Depends, FastAPI
from sqlalchemy import Engine

from service import ui
from service.api import docs
from service.api.deps import require_api_key
from service.api.routes import (
    catalog,
    health,
    history,
    insights,
    jobs,
    recommendations,
    reports,
    results,
)
from service.core import db, errors, metrics
from service.core.limits import BodySizeLimitMiddleware
from service.core.route_templates import RouteTemplates
from service.core.settings import Settings, get_settings
from service.jobs.history import HistoryPools
from service.runners.sweeper import LeaseSweeper

logger = logging.getLogger("optpilot.service")

# Routers under /v1; every route in them requires the API key when keys are configured.
# Add new resources here (e.g. the jobs router).
V1_ROUTERS: list[APIRouter] = [
    recommendations.router,
    jobs.router,
    reports.router,
    catalog.router,
    results.router,
    history.router,
    insights.router,
]
# Routers that handle authentication themselves (/healthz is open; /readyz and /metrics ask for
# the key). The dashboard (/ui, and / redirecting to it) is public: its data comes from the API.
OTHER_ROUTERS: list[APIRouter] = [health.router]

DESCRIPTION = """\
optpilot recommends a training optimizer for a described model and task, tunes it with Optuna
on GPU or CPU workers, and keeps every result for later queries.

Authentication: `Authorization: Bearer <key>` when the server has API keys configured, on every
route but `/healthz` and the documentation (`/docs`, `/redoc`, `/openapi.json`) and dashboard
(`/ui`) pages, which are public. Errors are `application/problem+json` (RFC 9457).

Also served: a job's HTML report (`/v1/jobs/{id}/report`), a web dashboard at `/ui`, and
Prometheus metrics at `/metrics`.
"""


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
            sweeper.join()
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
    app.state.history = HistoryPools()  # the namespaces' evidence pools (service.jobs.history)
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
