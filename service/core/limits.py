"""Request body size limit: a pure ASGI middleware answering 413 problems.

A declared ``Content-Length`` over the limit is refused before the app runs; a body streamed
without one (chunked) is counted as it is read, and reading stops with a 413 as soon as it passes
the limit. (String, list and number bounds live on the request models in ``service.api.schemas``.)
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.errors import ProblemError, problem_response


def _too_large(limit: int) -> ProblemError:
    return ProblemError(413, detail=f"the request body exceeds the limit of {limit} bytes")


class BodySizeLimitMiddleware:
    """Reject HTTP request bodies larger than ``max_body_bytes`` with 413."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be >= 1")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared == -1:
            await _send_problem(scope, send, ProblemError(400, detail="invalid Content-Length"))
            return
        if declared is not None and declared > limit:
            await _send_problem(scope, send, _too_large(limit))
            return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except ProblemError as exc:
            # Normally the app's exception handlers answer first; this covers reads outside them.
            if response_started or exc.status_code != 413:
                raise
            await _send_problem(scope, send, exc)


def _content_length(scope: Scope) -> int | None:
    """The declared length; None when absent, -1 when malformed."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            digits = bytes(value).strip()
            if not digits.isdigit():
                return -1
            return int(digits) if len(digits) <= 18 else 10**18
    return None


async def _send_problem(scope: Scope, send: Send, exc: ProblemError) -> None:
    response = problem_response(
        exc.status_code,
        title=exc.title,
        detail=exc.detail,
        instance=str(scope.get("path", "")) or None,
        headers={"Connection": "close"},
    )

    async def _receive() -> Message:  # the response never reads the request
        return {"type": "http.disconnect"}

    await response(scope, _receive, send)
