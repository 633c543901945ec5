"""``POST /v1/recommendations`` (ranked optimizers with priors, stored) and ``GET .../{id}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from service.api.deps import HistoryDep, SessionDep
from service.api.schemas import RecommendationOut, RecommendationRequest, ResourceId
from service.core.errors import ProblemError, problem_responses
from service.core.models import Recommendation, new_id, utcnow
from tuner.prior import recommend

router = APIRouter(prefix="/v1/recommendations", tags=["recommendations"])


@router.post(
    "",
    status_code=201,
    summary="Recommend optimizers for a task",
    response_description="The stored recommendation; its URL is in Location.",
    responses=problem_responses(401, 413, 422, 503),
)
def create_recommendation(
    body: RecommendationRequest, session: SessionDep, history: HistoryDep, request: Request,
    response: Response,
) -> RecommendationOut:
    evidence = history.pool(session, body.namespace) if body.use_history else None
    try:
        recommendation = recommend(body.task, top_k=body.top_k, evidence=evidence)
    except ValueError as exc:
        raise ProblemError(422, detail=str(exc)) from None
    row = Recommendation(
        id=new_id(),
        task=body.task.model_dump(mode="json"),
        top_k=body.top_k,
        namespace=body.namespace,
        use_history=body.use_history,
        candidates=[candidate.model_dump(mode="json") for candidate in recommendation.candidates],
        created_at=utcnow(),
    )
    session.add(row)
    session.commit()
    response.headers["Location"] = str(
        request.app.url_path_for("get_recommendation", recommendation_id=row.id)
    )
    return RecommendationOut.model_validate(row)


@router.get(
    "/{recommendation_id}",
    name="get_recommendation",
    summary="A stored recommendation",
    responses=problem_responses(401, 404, 422, 503),
)
def get_recommendation(
    recommendation_id: Annotated[ResourceId, Path()], session: SessionDep
) -> RecommendationOut:
    row = session.get(Recommendation, recommendation_id)
    if row is None:
        raise ProblemError(404, detail=f"recommendation {recommendation_id!r} was not found")
    return RecommendationOut.model_validate(row)
