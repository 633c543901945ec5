"""A database that is busy, locked or gone: every route answers 503 + Retry-After, also when
the error comes through Optuna's storage (which wraps SQLAlchemy's errors in its own
``StorageInternalError``), and a connection lost after the answer went out changes nothing."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.pool import NullPool

from service.api.deps import SessionDep
from service.app import create_app
from tests.service.conftest import settings_for

JOB = {"workload": None, "n_trials": 3, "task": {"model_family": "mlp", "num_parameters": 1000}}


def with_short_lock_waits(url: str) -> str:
    """``url`` whose PostgreSQL sessions give up waiting for a lock after 0.2 s (SQLite: the
    app's busy timeout, set below)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return url
    options = f"{parsed.query.get('options', '')} -clock_timeout=200".strip()
    return parsed.update_query_dict({"options": options}).render_as_string(hide_password=False)


@contextmanager
def studies_locked(url: str) -> Iterator[None]:
    """Another connection holds the write lock (SQLite) or an exclusive lock on Optuna's
    ``studies`` table (PostgreSQL) while in the block."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        holder = sqlite3.connect(str(parsed.database), isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("LOCK TABLE studies IN ACCESS EXCLUSIVE MODE"))
            try:
                yield
            finally:
                connection.rollback()
    finally:
        engine.dispose()


def test_storage_errors_through_optuna_are_503_with_retry_after(migrated_url: str) -> None:
    app = create_app(settings_for(with_short_lock_waits(migrated_url),
                                  sqlite_busy_timeout_s=0.2))
    with TestClient(app) as client:
        job_id = client.post("/v1/jobs", json=JOB).json()["id"]  # Optuna's storage is open
        with studies_locked(migrated_url):
            for method, path, body in (("POST", "/v1/jobs", JOB),
                                       ("GET", f"/v1/jobs/{job_id}", None),
                                       ("GET", f"/v1/jobs/{job_id}/report", None)):
                response = client.request(method, path, json=body)
                assert response.status_code == 503, (path, response.text)
                assert response.headers["content-type"] == "application/problem+json"
                assert int(response.headers["retry-after"]) >= 1
        assert client.post("/v1/jobs", json=JOB).status_code == 202, "served again"


def test_a_connection_lost_after_the_answer_went_out_is_closed_quietly(
        postgres_database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The request's session is closed after the response was sent (FastAPI's dependency
    exit); if the database dropped its connection meanwhile (stopped, restarted), closing it
    fails. That must not turn into "response already started" or a 500 logged for a request
    that was answered."""
    app = create_app(settings_for(postgres_database_url))
    admin = sa.create_engine(postgres_database_url, poolclass=NullPool,
                             isolation_level="AUTOCOMMIT")

    @app.get("/test/answer-then-lose-the-connection")
    def answer(session: SessionDep) -> dict[str, bool]:
        pid = session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with admin.connect() as connection:  # as a server shutdown would
            connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        return {"answered": True}

    try:
        with TestClient(app) as client, caplog.at_level(logging.WARNING):
            response = client.get("/test/answer-then-lose-the-connection")
            assert response.status_code == 200 and response.json() == {"answered": True}
            assert client.get("/readyz").status_code in (200, 503)  # the app still serves
    finally:
        admin.dispose()
    assert any("database connection lost" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
