"""Fixtures for the service tests: real databases (a SQLite file always, PostgreSQL when
``OPTPILOT_TEST_POSTGRES_URL`` is set), migrated with ``service.core.db.upgrade``, and a TestClient.

PostgreSQL: each test session creates a uniquely named database (dropped at the end) and each
test gets a fresh schema in it, selected through the URL (``?options=-csearch_path=...``), so
parallel runs, other tests and Optuna's tables never collide. Without the URL the PostgreSQL
cases are skipped, except under ``CI=true``, where a missing or unreachable server fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, make_url, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from service.app import create_app
from service.core.db import upgrade
from service.core.models import Job, Recommendation, Result, new_id, utcnow
from service.core.settings import Settings

POSTGRES_ENV = "OPTPILOT_TEST_POSTGRES_URL"
TEST_DB_PREFIX = "optpilot_test_"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"PostgreSQL is required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The PostgreSQL server URL from the environment, checked once per session."""
    url = os.environ.get(POSTGRES_ENV, "").strip()
    if not url:
        _unavailable(f"{POSTGRES_ENV} is not set")
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        _unavailable(f"PostgreSQL at {POSTGRES_ENV} is unreachable: {exc}")
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="session")
def postgres_database_url(postgres_admin_url: str) -> Iterator[str]:
    """A database of this test session's own on the PostgreSQL server (dropped at the end)."""
    name = f"{TEST_DB_PREFIX}{uuid.uuid4().hex[:16]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(postgres_admin_url).set(database=name).render_as_string(
            hide_password=False
        )
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def _postgres_schema(database_url: str) -> Iterator[str]:
    """A fresh schema in ``database_url``; yields a URL whose connections use only it."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    owner = create_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with owner.connect() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(database_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        try:
            with owner.connect() as connection:
                connection.execute(text("SET lock_timeout = '5s'"))
                connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        except SQLAlchemyError:
            pass  # a straggling connection holds a lock: the database goes at session end
        owner.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new schema in the session's PostgreSQL
    database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'optpilot.db'}"
        return
    with _postgres_schema(request.getfixturevalue("postgres_database_url")) as url:
        yield url


@pytest.fixture
def migrated_url(database_url: str) -> str:
    """``database_url`` with the service's migrations applied."""
    upgrade(database_url)
    return database_url


def settings_for(database_url: str, **overrides: Any) -> Settings:
    """Settings for tests: no keys from the environment unless given here."""
    values: dict[str, Any] = {"database_url": database_url, "api_keys": [], "worker_api_key": None}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    """``make_settings(url, **overrides)``: Settings that ignore keys set in the environment."""
    return settings_for


@pytest.fixture
def app(migrated_url: str) -> FastAPI:
    return create_app(settings_for(migrated_url))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def sessions(app: FastAPI) -> sessionmaker[Session]:
    """The app's own sessionmaker, for arranging and checking rows directly."""
    factory: sessionmaker[Session] = app.state.sessionmaker
    return factory


@pytest.fixture
def count_recommendations(sessions: sessionmaker[Session]) -> Callable[[], int]:
    def count() -> int:
        with sessions() as session:
            return session.scalar(select(func.count()).select_from(Recommendation)) or 0

    return count


@pytest.fixture
def add_result(sessions: sessionmaker[Session]) -> Callable[..., str]:
    """Insert a job and its result row; returns the result id. Keyword arguments override."""

    def add(
        *,
        model_family: str = "mlp",
        task_type: str = "classification",
        num_parameters: int = 100_000,
        workload: str | None = "digits-mlp",
        best_optimizer: str | None = "adamw",
        best_value: float | None = 0.5,
        metric: str = "val_loss",
        prior_top: str | None = "adamw",
        **fields: Any,
    ) -> str:
        task = {"model_family": model_family, "task_type": task_type,
                "num_parameters": num_parameters}
        job_id = new_id()
        with sessions() as session:
            session.add(
                Job(
                    id=job_id,
                    status="completed",
                    workload=workload,
                    task=task,
                    n_trials=10,
                    pruner="median",
                    study_name=f"optpilot-{job_id}",
                    finished_at=utcnow(),
                )
            )
            session.flush()
            values: dict[str, Any] = {
                "job_id": job_id,
                "workload": workload,
                "model_family": model_family,
                "task_type": task_type,
                "num_parameters": num_parameters,
                "task": task,
                "metric": metric,
                "direction": "minimize",
                "best_value": best_value,
                "best_optimizer": best_optimizer,
                "best_hyperparameters": {"lr": 1e-3} if best_optimizer else {},
                "per_optimizer": (
                    {best_optimizer: {"trials": 10, "completed": 10, "best_value": best_value}}
                    if best_optimizer else {}
                ),
                "trials_used": 10,
                "prior_top": prior_top,
            }
            result = Result(**{**values, **fields})
            session.add(result)
            session.commit()
            return result.id

    return add
