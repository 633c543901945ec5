"""Liveness, readiness and metrics: ``GET /healthz`` (never authenticated), ``GET /readyz`` and
``GET /metrics`` (Prometheus text format, from ``service.core.metrics``)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from service.api.deps import ApiKeyDep
from service.api.schemas import HealthOut, ReadyOut
from service.core import db
from service.core.errors import RETRY_AFTER_UNAVAILABLE_S, ProblemError, logger, problem_responses
from service.core.metrics import Metrics

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> HealthOut:
    return HealthOut()


@router.get(
    "/readyz",
    summary="The database is reachable and migrated",
    responses=problem_responses(401, 503),
)
def readyz(request: Request, _caller: ApiKeyDep) -> ReadyOut:
    engine: Engine = request.app.state.engine
    expected: str | None = request.app.state.schema_head
    retry = {"Retry-After": str(RETRY_AFTER_UNAVAILABLE_S)}
    try:
        db.ping(engine)
        revision = db.current_revision(engine)
    except SQLAlchemyError as exc:
        logger.warning("readiness check failed: %s", exc)
        raise ProblemError(503, detail="the database is unreachable", headers=retry) from None
    if revision != expected:
        raise ProblemError(
            503,
            detail=f"the database schema is at revision {revision}, expected {expected}: "
            "run the migrations (service.core.db.upgrade)",
            headers=retry,
        )
    return ReadyOut(schema_revision=revision)


@router.get("/metrics", summary="Prometheus metrics (text format)",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                             "description": "Prometheus text exposition format."},
                       **problem_responses(401)})
def metrics_endpoint(request: Request, _caller: ApiKeyDep) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST,
                    headers={"Cache-Control": "no-store"})
