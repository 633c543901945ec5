"""Errors as ``application/problem+json`` (RFC 9457), for every failure the API can answer.

Raise :class:`ProblemError` anywhere in a request (routes, dependencies, middleware-wrapped
``receive``); :func:`install` registers the handlers that turn it, request validation errors,
HTTP errors (unknown routes, wrong methods), database trouble and anything unexpected into
problem documents::

    {"type": "about:blank", "title": "Not Found", "status": 404,
     "detail": "recommendation 'ab12' was not found", "instance": "/v1/recommendations/ab12"}

Validation errors (422) add ``errors: [{"loc": [...], "field": "body.task.num_parameters",
"msg": "...", "type": "..."}]`` and never echo the rejected input (which may be NaN, bytes or
anything else that JSON cannot carry). A busy or unreachable database is a 503 with
``Retry-After`` wherever it is noticed: in the service's own queries (SQLAlchemy's errors) or
through Optuna's storage, which wraps them (``StorageInternalError``); see
:func:`database_unavailable`. An unexpected exception is logged and answered with a 500 that
reveals nothing.
"""

from __future__ import annotations

import http
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from optuna.exceptions import StorageInternalError
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from service.core import jsonsafe

logger = logging.getLogger("optpilot.service")

PROBLEM_CONTENT_TYPE = "application/problem+json"
MAX_MESSAGE_CHARS = 500
MAX_REPORTED_ERRORS = 50
RETRY_AFTER_BUSY_S = 1
BODY_PARSE_ERROR = "There was an error parsing the body"
RETRY_AFTER_UNAVAILABLE_S = 5


# RFC 9110's names where Python 3.11's http module still has the older ones.
_RFC9110_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


def _phrase(status: int) -> str:
    if status in _RFC9110_TITLES:
        return _RFC9110_TITLES[status]
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _text(value: object) -> str:
    """A short string that always encodes as UTF-8 (lone surrogates replaced)."""
    text = str(value)
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    return text.encode("utf-8", "replace").decode("utf-8")


class ProblemError(HTTPException):
    """An HTTP error answered as a problem document.

    ``extra`` members are added to the document (JSON-sanitized). Subclassing Starlette's
    ``HTTPException`` lets it pass through FastAPI's body reading unchanged.
    """

    def __init__(
        self,
        status: int,
        title: str | None = None,
        detail: str | None = None,
        *,
        type_uri: str = "about:blank",
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.title = title or _phrase(status)
        super().__init__(status_code=status, detail=detail or self.title, headers=headers)
        self.type_uri = type_uri
        self.extra = extra

    @property
    def status(self) -> int:
        return self.status_code


class Problem(BaseModel):
    """The problem document (RFC 9457), for the OpenAPI description."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(default="about:blank", examples=["about:blank"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(examples=[404])
    detail: str | None = Field(default=None, examples=["recommendation 'ab12' was not found"])
    instance: str | None = Field(default=None, examples=["/v1/recommendations/ab12"])


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries documenting problem answers in OpenAPI."""
    return {
        status: {
            "model": Problem,
            "description": _phrase(status),
            "content": {PROBLEM_CONTENT_TYPE: {}},
        }
        for status in statuses
    }


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_CONTENT_TYPE


def problem_response(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    instance: str | None = None,
    type_uri: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    """A problem document response (no body for statuses that cannot have one)."""
    if status < 200 or status in (204, 205, 304):
        return Response(status_code=status, headers=dict(headers or {}))
    body: dict[str, Any] = {
        "type": type_uri,
        "title": _text(title or _phrase(status)),
        "status": status,
    }
    if detail is not None:
        body["detail"] = _text(detail)
    if instance is not None:
        body["instance"] = _text(instance)
    for key, value in extra.items():
        body.setdefault(key, jsonsafe.sanitize(value))
    return ProblemResponse(body, status_code=status, headers=dict(headers or {}))


def _instance(request: Request) -> str:
    return str(request.url.path)


# --- handlers ---------------------------------------------------------------------------------


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, ProblemError):
        return problem_response(
            exc.status_code,
            title=exc.title,
            detail=exc.detail,
            instance=_instance(request),
            type_uri=exc.type_uri,
            headers=exc.headers,
            **exc.extra,
        )
    detail = exc.detail if isinstance(exc.detail, str) else None
    if exc.status_code == 400 and detail == BODY_PARSE_ERROR:
        # FastAPI's answer to a body that is not text at all (e.g. invalid UTF-8): bad input,
        # so a 422 naming the body like every other malformed request.
        message = "invalid JSON: the body could not be decoded"
        return problem_response(
            422, detail=f"body: {message}", instance=_instance(request),
            errors=[{"loc": ["body"], "field": "body", "msg": message, "type": "json_invalid"}],
        )
    extra: dict[str, Any] = {} if isinstance(exc.detail, str) else {"errors": exc.detail}
    headers = dict(exc.headers or {})
    if exc.status_code == 404 and detail == _phrase(404):
        detail = f"no route matches {request.method} {request.url.path}"
    if exc.status_code == 405:
        # Starlette names only the methods of the first route whose path matched; a path served
        # by several routes (GET and POST /v1/jobs) allows all of theirs.
        allowed = {m.strip() for m in headers.get("Allow", "").split(",") if m.strip()}
        templates = getattr(request.app.state, "route_templates", None)
        if templates is not None:
            allowed.update(templates.methods(request.url.path))
        headers["Allow"] = ", ".join(sorted(allowed))
    return problem_response(
        exc.status_code,
        detail=detail,
        instance=_instance(request),
        headers=headers,
        **extra,
    )



def _loc(parts: Sequence[Any]) -> list[str | int]:
    return [p if isinstance(p, int) and not isinstance(p, bool) else _text(p) for p in parts]


def validation_errors(raw: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI errors as ``{"loc", "field", "msg", "type"}``; inputs are never copied."""
    out: list[dict[str, Any]] = []
    for error in list(raw)[:MAX_REPORTED_ERRORS]:
        if not isinstance(error, Mapping):
            out.append({"loc": [], "field": "", "msg": _text(error), "type": "value_error"})
            continue
        kind = _text(error.get("type", "value_error"))
        loc = _loc(error.get("loc", ()))
        msg = _text(error.get("msg", "invalid value"))
        if kind == "json_invalid":
            position = loc[1] if len(loc) > 1 else None
            reason = (error.get("ctx") or {}).get("error", "malformed JSON")
            where = f" at position {position}" if position is not None else ""
            msg = _text(f"invalid JSON: {reason}{where}")
            loc = loc[:1]
        field = ".".join(str(p) for p in loc)
        out.append({"loc": loc, "field": field, "msg": msg, "type": kind})
    return out


async def validation_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc.errors())
    if errors:
        first = errors[0]
        detail = f"{first['field']}: {first['msg']}" if first["field"] else first["msg"]
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
    else:
        detail = "the request is not valid"
    return problem_response(
        422, detail=detail, instance=_instance(request), errors=errors
    )


def _database_error(exc: BaseException) -> BaseException | None:
    """The database error behind ``exc``: itself, or the SQLAlchemy error that Optuna's storage
    wrapped (``raise StorageInternalError(...) from error``), following explicit causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, sa_exc.SQLAlchemyError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def database_unavailable(exc: BaseException) -> bool:
    """Is ``exc`` the database being busy, down or unreachable (worth retrying later)?

    The one test for it: the API answers 503 + ``Retry-After``, workers wait and retry.
    """
    error = _database_error(exc)
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    return isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated


def database_error_text(exc: BaseException) -> str:
    """One line saying what went wrong with the database (the wrapped error's, not Optuna's
    generic "An exception is raised during the commit")."""
    error = _database_error(exc) or exc
    text = str(getattr(error, "orig", None) or error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:MAX_MESSAGE_CHARS]


def _database_busy(exc: BaseException) -> bool:
    error = _database_error(exc) or exc
    message = str(getattr(error, "orig", error)).lower()
    return "locked" in message or "busy" in message


async def database_error_handler(request: Request, exc: Exception) -> Response:
    if database_unavailable(exc):
        busy = _database_busy(exc)
        if busy:
            logger.warning("database busy on %s %s: %s", request.method, request.url.path, exc)
        else:
            logger.error(
                "database unavailable on %s %s", request.method, request.url.path, exc_info=exc
            )
        retry_after = RETRY_AFTER_BUSY_S if busy else RETRY_AFTER_UNAVAILABLE_S
        return problem_response(
            503,
            detail="the database is busy; retry shortly" if busy
            else "the database is unavailable; retry later",
            instance=_instance(request),
            headers={"Retry-After": str(retry_after)},
        )
    if isinstance(_database_error(exc), sa_exc.IntegrityError):
        logger.warning("integrity error on %s %s: %s", request.method, request.url.path, exc)
        return problem_response(
            409,
            detail="the request conflicts with stored data",
            instance=_instance(request),
        )
    return _internal_error(request, exc)


async def unhandled_error_handler(request: Request, exc: Exception) -> Response:
    if _database_error(exc) is not None:  # wrapped by a library (Optuna): same answers
        return await database_error_handler(request, exc)
    return _internal_error(request, exc)


def _internal_error(request: Request, exc: Exception) -> Response:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        500,
        detail="an unexpected error occurred; it has been logged",
        instance=_instance(request),
    )


def install(app: FastAPI) -> None:
    """Register every problem handler on ``app``."""
    app.add_exception_handler(ProblemError, http_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(sa_exc.DBAPIError, database_error_handler)
    app.add_exception_handler(sa_exc.TimeoutError, database_error_handler)
    app.add_exception_handler(StorageInternalError, database_error_handler)
    app.add_exception_handler(Exception, unhandled_error_handler)
