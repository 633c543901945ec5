"""Settings from the environment, JSON sanitizing, the body-limit middleware's edges."""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from service.app import create_app
from service.core import jsonsafe
from service.core.settings import Settings


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("OPTPILOT_API_KEYS", " k1, k2 ,,")
    monkeypatch.setenv("OPTPILOT_WORKER_API_KEY", "w")
    monkeypatch.setenv("OPTPILOT_MAX_BODY_BYTES", "2048")
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://u@h/db"
    assert settings.api_keys == ["k1", "k2"]
    assert settings.worker_api_key == "w"
    assert settings.max_body_bytes == 2048
    assert settings.auth_enabled
    assert "k1" not in repr(settings)

    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.setenv("OPTPILOT_DATABASE_URL", "sqlite:///other.db")
    assert Settings().database_url == "sqlite:///other.db"


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "OPTPILOT_DATABASE_URL", "OPTPILOT_API_KEYS",
                 "OPTPILOT_WORKER_API_KEY", "OPTPILOT_MAX_BODY_BYTES"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.database_url == "sqlite:///./optpilot.db"
    assert settings.api_keys == [] and settings.worker_api_key is None
    assert not settings.auth_enabled
    assert settings.max_body_bytes == 1024 * 1024
    with pytest.raises(ValueError, match="API keys"):
        Settings(api_keys=["has space"])


def test_jsonsafe() -> None:
    value = {"a": math.nan, "b": [math.inf, 1.5, (2, -math.inf)], 3: {"c": None}}
    assert jsonsafe.sanitize(value) == {"a": None, "b": [None, 1.5, [2, None]], "3": {"c": None}}
    assert jsonsafe.dumps({"x": math.nan}) == '{"x":null}'
    assert jsonsafe.finite_or_none(math.inf) is None
    assert jsonsafe.finite_or_none(2.0) == 2.0


@pytest.mark.parametrize(
    ("length", "status"), [("abc", 400), ("-1", 400), ("9" * 40, 413), ("2049", 413)]
)
def test_content_length_edges(tmp_path: object, length: str, status: int) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/x.db", api_keys=[], max_body_bytes=2048
    )
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/v1/recommendations",
            content=b"{}",
            headers={"content-type": "application/json", "content-length": length},
        )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"


def test_unexpected_errors_are_logged_500_problems(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/x.db", api_keys=[]))

    def boom() -> None:
        raise RuntimeError("secret internals")

    def gone() -> None:
        raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))

    app.add_api_route("/boom", boom)
    app.add_api_route("/gone", gone)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
        assert response.status_code == 500
        assert response.headers["content-type"] == "application/problem+json"
        assert "secret" not in response.text
        assert any("unhandled error" in r.getMessage() for r in caplog.records)

        unavailable = client.get("/gone")
        assert unavailable.status_code == 503
        assert unavailable.headers["retry-after"] == "5"
        assert "secret" not in unavailable.text
