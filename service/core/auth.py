"""Bearer API keys: ``Authorization: Bearer <key>`` on every API route. Public by design:
``/healthz``, the documentation (``/docs``, ``/redoc``, ``/openapi.json``: see ``service.api.docs``)
and the dashboard page ``/ui`` (its data comes through the API with the user's key).

Keys come from ``Settings.api_keys`` (users) and ``Settings.worker_api_key`` (workers). With no
key configured authentication is off. A presented key is compared with every configured key in
constant time (``hmac.compare_digest``), so timing reveals neither which key nor how much of it
matched. Failures are 401 problems with ``WWW-Authenticate: Bearer``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal

from service.core.errors import ProblemError
from service.core.settings import Settings

Role = Literal["anonymous", "user", "worker"]


@dataclass(frozen=True)
class Caller:
    """Who made the request: ``anonymous`` when auth is off, else which kind of key matched."""

    role: Role


def _matches(presented: bytes, keys: list[str]) -> bool:
    matched = False
    for key in keys:  # no early exit: every key is compared
        matched |= hmac.compare_digest(presented, key.encode("utf-8"))
    return matched


def authenticate(settings: Settings, token: str | None) -> Caller:
    """The caller for a presented bearer ``token`` under ``settings``; raises a 401 problem."""
    if not settings.auth_enabled:
        return Caller("anonymous")
    if not token:
        raise ProblemError(
            401,
            detail="an API key is required: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    presented = token.encode("utf-8", "surrogatepass")
    is_user = _matches(presented, settings.api_keys)
    worker_keys = [settings.worker_api_key] if settings.worker_api_key is not None else []
    is_worker = _matches(presented, worker_keys)
    if is_user:
        return Caller("user")
    if is_worker:
        return Caller("worker")
    raise ProblemError(
        401,
        detail="the API key is not valid",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


