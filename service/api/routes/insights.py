"""Where the rules were wrong: ``GET /v1/insights/rules`` holds each rule of the prior against
the namespace's finished jobs (``tuner.evidence.insights`` defines the numbers)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.api.deps import SessionDep
from service.api.schemas import InsightsQuery, RuleInsightsOut
from service.core.errors import problem_responses
from service.jobs.history import namespace_insights

router = APIRouter(prefix="/v1/insights", tags=["insights"])


@router.get(
    "/rules",
    summary="Each rule against the namespace's finished jobs, most wrong first",
    responses=problem_responses(401, 422, 503),
)
def rule_insights(query: Annotated[InsightsQuery, Query()],
                  session: SessionDep) -> RuleInsightsOut:
    return RuleInsightsOut.of(query.namespace, namespace_insights(session, query.namespace))
