"""Service configuration, read from the environment (``OPTPILOT_*``, plus ``DATABASE_URL``).

| setting | environment | default |
|---|---|---|
| ``database_url`` | ``DATABASE_URL`` or ``OPTPILOT_DATABASE_URL`` | ``sqlite:///./optpilot.db`` |
| ``api_keys`` | ``OPTPILOT_API_KEYS`` (comma-separated) | none: authentication off |
| ``worker_api_key`` | ``OPTPILOT_WORKER_API_KEY`` | none |
| ``max_body_bytes`` | ``OPTPILOT_MAX_BODY_BYTES`` | 1 MiB |
| ``sqlite_busy_timeout_s`` | ``OPTPILOT_SQLITE_BUSY_TIMEOUT_S`` | 10 s |
| ``lease_s`` | ``OPTPILOT_LEASE_S`` | 60 s (client-evaluated trials) |
| ``reap_interval_s`` | ``OPTPILOT_REAP_INTERVAL_S`` | 5 s |
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./optpilot.db"
MAX_API_KEY_LENGTH = 512


class Settings(BaseSettings):
    """Everything the API process needs to know; construct directly in tests."""

    model_config = SettingsConfigDict(
        env_prefix="OPTPILOT_",
        extra="ignore",
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    database_url: str = Field(
        default=DEFAULT_DATABASE_URL,
        min_length=1,
        validation_alias=AliasChoices("DATABASE_URL", "OPTPILOT_DATABASE_URL"),
        description="SQLAlchemy URL: sqlite:///path.db or postgresql+psycopg://user@host/db.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="Accepted bearer keys (comma-separated in the environment); empty: auth off.",
    )
    worker_api_key: str | None = Field(
        default=None, repr=False, description="A separate bearer key for workers, also accepted."
    )
    max_body_bytes: int = Field(default=1024 * 1024, ge=1, le=1024**3)
    sqlite_busy_timeout_s: float = Field(
        default=10.0, gt=0, le=3600, allow_inf_nan=False,
        description="How long the API waits for a busy SQLite file (its tables and Optuna's) "
        "before answering 503.",
    )
    lease_s: float = Field(
        default=60.0, gt=0, le=86_400, allow_inf_nan=False,
        description="How long a client-evaluated trial stays leased without a heartbeat.",
    )
    reap_interval_s: float = Field(
        default=5.0, gt=0, le=3600, allow_inf_nan=False,
        description="How often the API fails trials whose lease expired.",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            _check_key(key)
        return value

    @field_validator("worker_api_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("worker_api_key")
    @classmethod
    def _check_worker_key(cls, value: str | None) -> str | None:
        if value is not None:
            _check_key(value)
        return value

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys) or self.worker_api_key is not None


def _check_key(key: str) -> None:
    if not key or len(key) > MAX_API_KEY_LENGTH or not key.isprintable() or " " in key:
        raise ValueError(
            f"API keys must be 1..{MAX_API_KEY_LENGTH} printable characters without spaces"
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()


