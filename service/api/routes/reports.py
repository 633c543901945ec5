"""``GET /v1/jobs/{id}/report``: the job's self-contained HTML report (service.report.render)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse

from service.api.deps import OptunaStorageDep, SessionDep
from service.api.schemas import ResourceId
from service.core.errors import ProblemError, problem_responses
from service.jobs.state import JobNotFound, describe, get_job
from service.report.render import build_report

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# The page has no script and loads nothing: forbid everything but its inline styles and SVG.
REPORT_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
              "base-uri 'none'; form-action 'none'")


@router.get(
    "/{job_id}/report",
    summary="A job's report (HTML): plots, the prior vs the result, best configurations",
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}},
                     "description": "A self-contained HTML page (inline SVG, no script)."},
               **problem_responses(401, 404, 422, 503)},
)
def job_report(job_id: Annotated[ResourceId, Path()], session: SessionDep,
               storage: OptunaStorageDep) -> HTMLResponse:
    try:
        job = get_job(session, job_id)
    except JobNotFound:
        raise ProblemError(404, detail=f"job {job_id!r} was not found") from None
    html = build_report(describe(job, storage))
    return HTMLResponse(html, headers={"Cache-Control": "no-store",
                                       "Content-Security-Policy": REPORT_CSP,
                                       "X-Content-Type-Options": "nosniff"})
