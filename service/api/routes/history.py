"""Moving knowledge between servers: ``GET /v1/history`` exports the history as JSON lines,
``POST /v1/history`` imports such lines (every line checked before anything is written; job
ids already known are skipped). The format is ``tuner.evidence.export``'s."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from service.api.deps import SessionDep
from service.api.schemas import NDJSON, HistoryImportOut, HistoryQuery
from service.core.errors import ProblemError, problem_responses
from service.jobs.history import export_lines, import_outcomes
from tuner.evidence.export import ExportFileError, LineProblem, load_lines

router = APIRouter(prefix="/v1/history", tags=["history"])

_LINES_SCHEMA: dict[str, Any] = {
    "type": "string",
    "description": "JSON lines: one finished job per line, as GET /v1/history writes them.",
}


@router.get(
    "",
    summary="The history as JSON lines, oldest first",
    response_class=Response,
    responses={200: {"description": "One finished job per line.",
                     "content": {NDJSON: {"schema": _LINES_SCHEMA}}},
               **problem_responses(401, 422, 503)},
)
def export_history(query: Annotated[HistoryQuery, Query()], session: SessionDep) -> Response:
    text = "".join(f"{line}\n" for line in export_lines(session, query.namespace))
    return Response(text, media_type=NDJSON, headers={"Cache-Control": "no-store"})


def _error(problem: LineProblem) -> dict[str, Any]:
    loc = ["body", problem.line, *problem.field]
    return {"loc": loc, "field": ".".join(str(p) for p in loc), "line": problem.line,
            "msg": problem.message, "type": problem.kind}


def _import(session: Session, body: bytes) -> HistoryImportOut:
    try:
        outcomes = load_lines(body.split(b"\n"))
    except ExportFileError as exc:
        raise ProblemError(422, detail=str(exc),
                           errors=[_error(p) for p in exc.problems]) from None
    report = import_outcomes(session, outcomes)
    return HistoryImportOut(added=report.added, skipped=report.skipped)


@router.post(
    "",
    operation_id="import_history",
    summary="Add finished jobs from JSON lines (all or nothing; known job ids skipped)",
    openapi_extra={"requestBody": {"required": False,  # no line imports nothing
                                   "content": {NDJSON: {"schema": _LINES_SCHEMA}}}},
    responses=problem_responses(401, 413, 422, 503),
)
async def import_history(request: Request, session: SessionDep) -> HistoryImportOut:
    body = await request.body()  # at most OPTPILOT_MAX_BODY_BYTES (service.core.limits)
    return await run_in_threadpool(_import, session, body)
