"""The catalogs: ``GET /v1/optimizers`` and ``GET /v1/workloads`` (and one entry of each)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

import optimizers
from optimizers import OptimizerSpec
from service.api.schemas import Listing, Name, OptimizerOut, WorkloadOut
from service.core.errors import ProblemError, problem_responses
from tuner.workloads import Workload, workloads

router = APIRouter(prefix="/v1", tags=["catalog"])


def optimizer_out(spec: OptimizerSpec) -> OptimizerOut:
    return OptimizerOut(
        name=spec.name,
        family=spec.family,
        when_to_use=spec.when_to_use,
        defaults=dict(spec.defaults),
        search_space=dict(spec.search_space),
        state_bytes_per_param=spec.state_bytes_per_param,
        references=list(spec.references),
        tuning_order=list(spec.tuning_order),
    )


def workload_out(workload: Workload | type[Workload]) -> WorkloadOut:
    return WorkloadOut(
        name=workload.name,
        summary=workload.summary,
        task=workload.task,
        metric=workload.metric,
        direction=workload.direction,
        default_epochs=workload.default_epochs,
    )


@router.get("/optimizers", summary="Every registered optimizer", responses=problem_responses(401))
def list_optimizers() -> Listing[OptimizerOut]:
    items = [optimizer_out(spec) for spec in optimizers.specs()]
    return Listing[OptimizerOut](items=items, total=len(items))


@router.get(
    "/optimizers/{name}", summary="One optimizer", responses=problem_responses(401, 404, 422)
)
def get_optimizer(name: Annotated[Name, Path()]) -> OptimizerOut:
    for spec in optimizers.specs():
        if spec.name == name:
            return optimizer_out(spec)
    raise ProblemError(404, detail=f"optimizer {name!r} is not registered")


@router.get("/workloads", summary="Every registered workload", responses=problem_responses(401))
def list_workloads() -> Listing[WorkloadOut]:
    items = [workload_out(workload) for workload in workloads()]
    return Listing[WorkloadOut](items=items, total=len(items))


@router.get(
    "/workloads/{name}", summary="One workload", responses=problem_responses(401, 404, 422)
)
def get_workload(name: Annotated[Name, Path()]) -> WorkloadOut:
    for workload in workloads():
        if workload.name == name:
            return workload_out(workload)
    raise ProblemError(404, detail=f"workload {name!r} is not registered")
