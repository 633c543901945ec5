"""The FastAPI dependencies every route draws on, in one place: the request's database session,
the app's settings, the caller behind the API key, the process's Optuna storage and its history
pools.

    def route(session: SessionDep, settings: SettingsDep, caller: ApiKeyDep,
              storage: OptunaStorageDep) -> ...

Each reads what ``service.app.create_app`` put on ``app.state``; nothing here opens a connection
per request (one engine and one Optuna storage per process).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated

import optuna
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from service.core.auth import Caller, authenticate
from service.core.errors import database_unavailable
from service.core.settings import Settings, get_settings
from service.core.storage import storage_for_app
from service.jobs.history import HistoryPools

logger = logging.getLogger("optpilot.service")

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key from OPTPILOT_API_KEYS (or OPTPILOT_WORKER_API_KEY for workers).",
)


async def app_settings(request: Request) -> Settings:  # async: no I/O, no thread-pool hop
    """The settings of the app serving ``request`` (``create_app`` stores them on app.state)."""
    settings = getattr(request.app.state, "settings", None)
    return settings if isinstance(settings, Settings) else get_settings()


SettingsDep = Annotated[Settings, Depends(app_settings)]


def get_session(request: Request) -> Iterator[Session]:
    """FastAPI dependency: one session per request from the app's sessionmaker, closed after.

    The session closes after the response went out (FastAPI runs a dependency's exit then), so
    a connection lost meanwhile (the database stopped) cannot change the answer any more: the
    rollback's error is logged, not raised, and the dead connection is discarded.
    """
    factory: sessionmaker[Session] = request.app.state.sessionmaker
    session = factory()
    try:
        yield session
    finally:
        try:
            session.close()
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            logger.warning("database connection lost before %s %s closed its session: %s",
                           request.method, request.url.path, str(exc).splitlines()[0][:200])


SessionDep = Annotated[Session, Depends(get_session)]


async def require_api_key(  # async: no I/O, so no thread-pool hop per request
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """FastAPI dependency: the authenticated caller (anonymous when auth is off)."""
    return authenticate(settings, credentials.credentials if credentials else None)


ApiKeyDep = Annotated[Caller, Depends(require_api_key)]


def app_optuna_storage(request: Request) -> optuna.storages.RDBStorage:
    """FastAPI dependency: the app's Optuna storage, made on first use (one per process)."""
    return storage_for_app(request.app)


OptunaStorageDep = Annotated[optuna.storages.RDBStorage, Depends(app_optuna_storage)]


async def app_history(request: Request) -> HistoryPools:  # async: no I/O
    """The app's history pools (one per process)."""
    pools: HistoryPools = request.app.state.history
    return pools


HistoryDep = Annotated[HistoryPools, Depends(app_history)]
