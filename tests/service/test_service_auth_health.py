"""API keys (on and off), /healthz and /readyz, and database trouble answered with 503."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.core.auth import Caller, authenticate
from service.core.db import upgrade
from service.core.settings import Settings

PROBLEM = "application/problem+json"
USER_KEY = "user-key-0123456789"
WORKER_KEY = "worker-key-9876543210"
V1_ROUTES = ["/v1/optimizers", "/v1/workloads", "/v1/results", "/v1/results/summary"]


@pytest.fixture
def secured(
    migrated_url: str, make_settings: Callable[..., Settings]
) -> Iterator[TestClient]:
    settings = make_settings(
        migrated_url, api_keys=["other-key", USER_KEY], worker_api_key=WORKER_KEY
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize("path", [*V1_ROUTES, "/readyz"])
def test_auth_required_when_keys_configured(secured: TestClient, path: str) -> None:
    missing = secured.get(path)
    assert missing.status_code == 401
    assert missing.headers["content-type"] == PROBLEM
    assert missing.headers["www-authenticate"].startswith("Bearer")

    wrong = secured.get(path, headers={"Authorization": "Bearer not-the-key"})
    assert wrong.status_code == 401
    assert "invalid_token" in wrong.headers["www-authenticate"]

    basic = secured.get(path, headers={"Authorization": f"Basic {USER_KEY}"})
    assert basic.status_code == 401

    for key in (USER_KEY, WORKER_KEY):
        ok = secured.get(path, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200, ok.text


def test_auth_guards_posts_before_reading_them(secured: TestClient) -> None:
    body = {"task": {"model_family": "mlp", "num_parameters": 1000}}
    assert secured.post("/v1/recommendations", json=body).status_code == 401
    ok = secured.post(
        "/v1/recommendations", json=body, headers={"Authorization": f"Bearer {USER_KEY}"}
    )
    assert ok.status_code == 201


def test_healthz_is_open(secured: TestClient) -> None:
    response = secured.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_auth_off_without_keys(client: TestClient) -> None:
    for path in V1_ROUTES:
        assert client.get(path).status_code == 200
    assert client.get("/v1/optimizers", headers={"Authorization": "Bearer x"}).status_code == 200


def test_authenticate_roles() -> None:
    settings = Settings(database_url="sqlite://", api_keys=["a1"], worker_api_key="w1")
    assert authenticate(settings, "a1") == Caller("user")
    assert authenticate(settings, "w1") == Caller("worker")
    assert authenticate(Settings(database_url="sqlite://", api_keys=[]), None).role == "anonymous"
    with pytest.raises(Exception, match="not valid"):
        authenticate(settings, "a1\u00e9\udc80")


def test_readyz(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"


def test_readyz_503_before_migrations(
    database_url: str, make_settings: Callable[..., Settings]
) -> None:
    with TestClient(create_app(make_settings(database_url))) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM
    assert "retry-after" in response.headers


def test_unreachable_database_is_503(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings("postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=2")
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert int(ready.headers["retry-after"]) > 0
        missing = client.get("/v1/recommendations/" + "0" * 32)
        assert missing.status_code == 503
        assert missing.headers["content-type"] == PROBLEM
        assert int(missing.headers["retry-after"]) > 0


def test_locked_sqlite_is_503(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    url = f"sqlite:///{tmp_path}/locked.db"
    upgrade(url)
    settings = make_settings(url, sqlite_busy_timeout_s=0.05)
    blocker = sqlite3.connect(f"{tmp_path}/locked.db", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        with TestClient(create_app(settings)) as client:
            response = client.post(
                "/v1/recommendations",
                json={"task": {"model_family": "mlp", "num_parameters": 1000}},
            )
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == PROBLEM
        assert response.headers["retry-after"] == "1"
        assert "busy" in response.json()["detail"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()


def test_openapi_is_served(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "optpilot"
    body = spec["components"]["schemas"]["RecommendationRequest"]
    assert body["examples"] and body["additionalProperties"] is False
    assert client.get("/docs").status_code == 200
