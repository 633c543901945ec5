"""Past tuning results: ``GET /v1/results`` (filtered, paginated), ``/summary``, ``/{id}``."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from sqlalchemy import ColumnElement, func, select

from service.api.deps import SessionDep
from service.api.schemas import (
    OptimizerWins,
    Page,
    ResourceId,
    ResultOut,
    ResultsFilter,
    ResultsQuery,
    ResultsSummary,
    SimilarTo,
    SummaryQuery,
)
from service.core.errors import ProblemError, problem_responses
from service.core.models import Result
from tuner.task import MAX_PARAMETERS

router = APIRouter(prefix="/v1/results", tags=["results"])


def conditions(query: ResultsFilter) -> list[ColumnElement[bool]]:
    """SQL conditions for a results filter (combined with AND)."""
    where: list[ColumnElement[bool]] = []
    if query.model_family is not None:
        where.append(Result.model_family == query.model_family)
    if query.task_type is not None:
        where.append(Result.task_type == query.task_type)
    if query.optimizer is not None:
        where.append(Result.best_optimizer == query.optimizer)
    if query.workload is not None:
        where.append(Result.workload == query.workload)
    if query.min_parameters is not None:
        where.append(Result.num_parameters >= query.min_parameters)
    if query.max_parameters is not None:
        where.append(Result.num_parameters <= query.max_parameters)
    return where


def similar_range(num_parameters: int, factor: float) -> SimilarTo:
    """Model sizes within ``factor`` of ``num_parameters``, either way."""
    low = max(1, math.floor(num_parameters / factor))
    high = min(MAX_PARAMETERS, math.ceil(num_parameters * factor))
    return SimilarTo(
        num_parameters=num_parameters, factor=factor, min_parameters=low, max_parameters=high
    )


@router.get(
    "",
    summary="Past results, newest first",
    responses=problem_responses(401, 422, 503),
)
def list_results(
    query: Annotated[ResultsQuery, Query()], session: SessionDep
) -> Page[ResultOut]:
    where = conditions(query)
    total = session.scalar(select(func.count()).select_from(Result).where(*where)) or 0
    rows = session.scalars(
        select(Result)
        .where(*where)
        .order_by(Result.created_at.desc(), Result.id.desc())
        .limit(query.limit)
        .offset(query.offset)
    ).all()
    return Page[ResultOut](
        items=[ResultOut.model_validate(row) for row in rows],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )


@router.get(
    "/summary",
    summary="Which optimizer won how often (optionally for tasks of a similar size)",
    responses=problem_responses(401, 422, 503),
)
def summarize_results(
    query: Annotated[SummaryQuery, Query()], session: SessionDep
) -> ResultsSummary:
    where = conditions(query)
    similar: SimilarTo | None = None
    if query.num_parameters is not None:
        similar = similar_range(query.num_parameters, query.factor)
        where += [
            Result.num_parameters >= similar.min_parameters,
            Result.num_parameters <= similar.max_parameters,
        ]
    total = session.scalar(select(func.count()).select_from(Result).where(*where)) or 0
    rows = session.execute(
        select(Result.best_optimizer, Result.metric, Result.direction, Result.best_value,
               Result.prior_top).where(*where, Result.best_optimizer.is_not(None))
    ).all()
    return summarize(rows, total=total, similar_to=similar)


def summarize(rows: Any, *, total: int, similar_to: SimilarTo | None = None) -> ResultsSummary:
    """Wins per optimizer from ``(best_optimizer, metric, direction, best_value, prior_top)``
    rows, ranked within each metric: a win on val_loss and one on accuracy are not comparable,
    so each (metric, direction) is its own table (most decided results first), and ``share``
    is the share of that metric's decided results."""
    wins: dict[tuple[str, str, str], list[float | None]] = defaultdict(list)
    decided_by_metric: dict[tuple[str, str], int] = defaultdict(int)
    with_prior = agreed = 0
    for optimizer, metric, direction, value, prior_top in rows:
        wins[(metric, direction, optimizer)].append(value)
        decided_by_metric[(metric, direction)] += 1
        if prior_top is not None:
            with_prior += 1
            agreed += prior_top == optimizer
    summary: list[OptimizerWins] = []
    for (metric, direction, optimizer), values in wins.items():
        finite = [v for v in values if v is not None and math.isfinite(v)]
        summary.append(
            OptimizerWins(
                optimizer=optimizer,
                wins=len(values),
                share=len(values) / decided_by_metric[(metric, direction)],
                median_best_value=statistics.median(finite) if finite else None,
                metric=metric,
                direction=direction,
            )
        )
    summary.sort(key=lambda item: (-decided_by_metric[(item.metric, item.direction)],
                                   item.metric, item.direction, -item.wins, item.optimizer))
    return ResultsSummary(
        total=total,
        decided=sum(decided_by_metric.values()),
        optimizers=summary,
        prior_agreement=agreed / with_prior if with_prior else None,
        similar_to=similar_to,
    )


@router.get(
    "/{result_id}",
    summary="One result",
    responses=problem_responses(401, 404, 422, 503),
)
def get_result(result_id: Annotated[ResourceId, Path()], session: SessionDep) -> ResultOut:
    row = session.get(Result, result_id)
    if row is None:
        raise ProblemError(404, detail=f"result {result_id!r} was not found")
    return ResultOut.model_validate(row)
