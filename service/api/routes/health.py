"""Liveness and readiness: ``GET /healthz`` (never authenticated) and ``GET /readyz``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from service.api.schemas import HealthOut, ReadyOut
from service.core import db
from service.core.auth import ApiKeyDep
from service.core.errors import RETRY_AFTER_UNAVAILABLE_S, ProblemError, logger, problem_responses

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
