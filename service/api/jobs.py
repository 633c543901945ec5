"""Tuning jobs: launch, list, watch (progress, best, per-optimizer summary), trials, cancel."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import ConfigDict, Field, StringConstraints, field_validator, model_validator

import optimizers
from service import leases
from service.db import SessionDep
from service.errors import ProblemError, problem_responses
from service.jobs import (
    MAX_TRIALS,
    JobConflict,
    JobNotFound,
    JobView,
    cancel_job,
    create_job,
    describe,
    get_job,
    retried_numbers,
    trial_json,
)
from service.leases import LeasedTrial, LeaseNotFound
from service.models import JOB_STATUSES, Job
from service.schemas import (
    DEFAULT_PAGE_SIZE,
    MAX_OFFSET,
    MAX_PAGE_SIZE,
    JsonObject,
    Name,
    OutFloat,
    Page,
    RequestModel,
    ResourceId,
    ResponseModel,
    SafeStr,
    ShortText,
)
from service.settings import SettingsDep
from service.storage import OptunaStorageDep
from tuner.task import TaskDescription
from tuner.workloads import workload_names

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_TIMEOUT_S = 30 * 24 * 3600.0
MAX_SEED = 2**31 - 1


class JobCreate(RequestModel):
    """``POST /v1/jobs``: tune a workload (server-side trials) or a task (``workload: null``,
    client-evaluated trials)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"workload": "digits-mlp", "n_trials": 30, "seed": 0, "pruner": "median"},
            {"workload": "rosenbrock", "n_trials": 20, "optimizers": ["adam", "sgd_momentum"]},
            {"workload": None, "n_trials": 20,
             "task": {"model_family": "transformer", "num_parameters": 124_000_000}},
        ]},
    )

    workload: Name | None = Field(description="Registered workload, or null for ask/tell jobs.")
    task: TaskDescription | None = Field(
        default=None, description="Defaults to the workload's own task description.")
    n_trials: int = Field(ge=1, le=MAX_TRIALS, description="Exact number of finished trials.")
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)
    optimizers: list[Name] | None = Field(
        default=None, min_length=1, max_length=32,
        description="Restrict the search to these optimizers (default: the prior's top 3).")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    pruner: Literal["median", "hyperband", "none"] = "median"
    max_retries: int = Field(default=2, ge=0, le=10,
                             description="Retries of a trial whose worker died or whose "
                             "lease expired.")

    @field_validator("optimizers")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("optimizer names must be unique")
        return value


class Progress(ResponseModel):
    total: int
    finished: int
    completed: int
    pruned: int
    failed: int
    running: int
    waiting: int
    retried: int = Field(description="Trials lost with their worker and run again.")


class Best(ResponseModel):
    value: OutFloat
    optimizer: str
    hyperparameters: JsonObject
    trial: int | None


class OptimizerProgress(ResponseModel):
    trials: int
    completed: int
    pruned: int
    failed: int
    best_value: OutFloat
    best_hyperparameters: JsonObject


class JobOut(ResponseModel):
    id: str
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    workload: str | None
    task: TaskDescription
    n_trials: int
    timeout_s: OutFloat
    optimizers: list[str] | None
    seed: int | None
    pruner: str
    study_name: str
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress
    best: Best | None
    per_optimizer: dict[str, OptimizerProgress]
    prior: list[JsonObject] = Field(description="The recommendation used as the prior.")


class TrialOut(ResponseModel):
    number: int
    state: str
    value: OutFloat
    optimizer: str | None
    hyperparameters: JsonObject
    reason: str | None
    retried: bool
    retry_of: int | None
    worker: str | None = Field(description="host:pid of the worker that ran it.")
    intermediate_values: dict[str, OutFloat]
    started_at: datetime | None
    completed_at: datetime | None


def job_out(view: JobView) -> JobOut:
    job, s = view.job, view.summary
    best = None
    if s.best_optimizer is not None:
        best = Best(value=s.best_value, optimizer=s.best_optimizer,
                    hyperparameters=s.best_hyperparameters, trial=s.best_trial)
    return JobOut(
        id=job.id, status=job.status, workload=job.workload,
        task=TaskDescription.model_validate(job.task), n_trials=job.n_trials,
        timeout_s=job.timeout_s, optimizers=job.optimizers, seed=job.seed, pruner=job.pruner,
        study_name=job.study_name, error=job.error, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at,
        progress=Progress(total=job.n_trials, finished=view.finished, completed=s.completed,
                          pruned=s.pruned, failed=s.failed, running=s.running,
                          waiting=s.waiting, retried=view.retried),
        best=best,
        per_optimizer={name: OptimizerProgress(**vars(o)) for name, o in s.per_optimizer.items()},
        prior=job.prior or [],
    )


def _field_error(field: list[str | int], message: str) -> ProblemError:
    name = ".".join(str(p) for p in field)
    return ProblemError(422, detail=f"{name}: {message}",
                        errors=[{"loc": field, "field": name, "msg": message,
                                 "type": "value_error"}])


def _lookup(session: SessionDep, job_id: str) -> Job:
    try:
        return get_job(session, job_id)
    except JobNotFound:
        raise ProblemError(404, detail=f"job {job_id!r} was not found") from None


@router.post("", status_code=202, summary="Launch a tuning job",
             response_description="The queued job; its URL is in Location.",
             responses=problem_responses(401, 413, 422, 503))
def launch_job(body: JobCreate, session: SessionDep, storage: OptunaStorageDep,
               request: Request, response: Response) -> JobOut:
    if body.workload is not None and body.workload not in workload_names():
        raise _field_error(["body", "workload"], f"unknown workload {body.workload!r} "
                           f"(known: {', '.join(workload_names())})")
    if body.workload is None and body.task is None:
        raise _field_error(["body", "task"], "required when workload is null")
    for i, name in enumerate(body.optimizers or ()):
        if name not in optimizers.names():
            raise _field_error(["body", "optimizers", i], f"unknown optimizer {name!r}")
    try:
        job = create_job(session, storage, workload=body.workload, task=body.task,
                         n_trials=body.n_trials, timeout_s=body.timeout_s,
                         optimizer_names=body.optimizers, seed=body.seed, pruner=body.pruner,
                         max_retries=body.max_retries)
    except ValueError as exc:
        raise ProblemError(422, detail=str(exc)) from None
    response.headers["Location"] = str(request.app.url_path_for("get_job", job_id=job.id))
    return job_out(describe(job, storage))


@router.get("", summary="List jobs, newest first", responses=problem_responses(401, 422, 503))
def list_jobs(
    session: SessionDep, storage: OptunaStorageDep,
    status: Annotated[Literal["queued", "running", "completed", "failed", "cancelled"] | None,
                      Query()] = None,
    workload: Annotated[Name | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Page[JobOut]:
    conditions: list[Any] = []
    if status is not None:
        assert status in JOB_STATUSES
        conditions.append(Job.status == status)
    if workload is not None:
        conditions.append(Job.workload == workload)
    total = session.scalar(sa.select(sa.func.count()).select_from(Job).where(*conditions)) or 0
    rows = session.scalars(sa.select(Job).where(*conditions)
                           .order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset))
    return Page(items=[job_out(describe(job, storage)) for job in rows], total=total,
                limit=limit, offset=offset)


@router.get("/{job_id}", name="get_job", summary="A job's status, progress and best so far",
            responses=problem_responses(401, 404, 422, 503))
def show_job(job_id: Annotated[ResourceId, Path()], session: SessionDep,
             storage: OptunaStorageDep) -> JobOut:
    return job_out(describe(_lookup(session, job_id), storage))


@router.get("/{job_id}/trials", summary="A job's trials, in order",
            responses=problem_responses(401, 404, 422, 503))
def list_trials(job_id: Annotated[ResourceId, Path()], session: SessionDep,
                storage: OptunaStorageDep) -> list[TrialOut]:
    view = describe(_lookup(session, job_id), storage)
    retried = retried_numbers(view.trials)
    return [TrialOut(**trial_json(t, retried)) for t in view.trials]


@router.post("/{job_id}/cancel", summary="Cancel a job",
             responses=problem_responses(401, 404, 409, 422, 503))
def cancel(job_id: Annotated[ResourceId, Path()], session: SessionDep,
           storage: OptunaStorageDep) -> JobOut:
    _lookup(session, job_id)
    try:
        job = cancel_job(session, job_id)
    except JobConflict as exc:
        raise ProblemError(409, detail=str(exc)) from None
    return job_out(describe(job, storage))


# -- client-evaluated trials (ask/tell under leases) ----------------------------------------

ClientId = Annotated[SafeStr, StringConstraints(min_length=1, max_length=128)]
MAX_STEP = 10**9


class TrialAsk(RequestModel):
    model_config = ConfigDict(extra="forbid",
                              json_schema_extra={"examples": [{"client_id": "gpu-box-1:4242"}]})

    client_id: ClientId = Field(description="Who evaluates; asking again returns its open trial.")


class LeasedTrialOut(ResponseModel):
    job_id: str
    number: int
    client_id: str
    optimizer: str
    hyperparameters: dict[str, OutFloat]
    state: str
    lease_expires_at: datetime


class TrialReport(RequestModel):
    model_config = ConfigDict(extra="forbid",
                              json_schema_extra={"examples": [{"step": 3, "value": 0.42}]})

    step: int = Field(ge=0, le=MAX_STEP)
    value: float = Field(allow_inf_nan=False)


class PruneAdvice(ResponseModel):
    should_prune: bool


class LeaseOut(ResponseModel):
    number: int
    lease_expires_at: datetime


class TrialResult(RequestModel):
    """``{"value": x}`` for a finished trial, or ``{"state": "failed"|"pruned", "reason"}``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"value": 0.137}, {"state": "pruned", "reason": "should_prune"},
        {"state": "failed", "reason": "CUDA out of memory"}]})

    value: float | None = Field(default=None, allow_inf_nan=False)
    state: Literal["failed", "pruned"] | None = None
    reason: ShortText | None = None

    @model_validator(mode="after")
    def _one_outcome(self) -> TrialResult:
        if (self.value is None) == (self.state is None):
            raise ValueError("give either value or state")
        if self.value is not None and self.reason is not None:
            raise ValueError("reason goes with state, not with value")
        return self

    def outcome(self) -> dict[str, Any]:
        if self.value is not None:
            return {"value": self.value}
        return {"state": self.state, "reason": self.reason}


def _leased_out(trial: LeasedTrial) -> LeasedTrialOut:
    lease = trial.lease
    return LeasedTrialOut(job_id=lease.job_id, number=lease.trial_number,
                          client_id=lease.client_id, optimizer=trial.optimizer,
                          hyperparameters=trial.hyperparameters, state=lease.state,
                          lease_expires_at=lease.lease_expires_at)


def _translated(exc: Exception) -> ProblemError:
    if isinstance(exc, JobNotFound):
        return ProblemError(404, detail=f"job {exc.args[0]!r} was not found")
    if isinstance(exc, LeaseNotFound):
        return ProblemError(404, detail=str(exc))
    if isinstance(exc, JobConflict):
        return ProblemError(409, detail=str(exc))
    return ProblemError(422, detail=str(exc))


TrialNumber = Annotated[int, Path(ge=0, le=MAX_TRIALS * 100)]


@router.post("/{job_id}/trials", status_code=201, summary="Ask for a trial to evaluate",
             response_description="A new trial (201) or the client's open one (200).",
             responses=problem_responses(401, 404, 409, 413, 422, 503))
def ask_trial(job_id: Annotated[ResourceId, Path()], body: TrialAsk, session: SessionDep,
              storage: OptunaStorageDep, settings: SettingsDep,
              response: Response) -> LeasedTrialOut:
    try:
        trial, created = leases.ask(session, storage, job_id, body.client_id, settings.lease_s)
    except (JobNotFound, JobConflict) as exc:
        raise _translated(exc) from None
    if not created:
        response.status_code = 200
    return _leased_out(trial)


@router.post("/{job_id}/trials/{number}/reports", summary="Report an intermediate value",
             responses=problem_responses(401, 404, 409, 422, 503))
def report_trial(job_id: Annotated[ResourceId, Path()], number: TrialNumber, body: TrialReport,
                 session: SessionDep, storage: OptunaStorageDep) -> PruneAdvice:
    try:
        prune = leases.report(session, storage, job_id, number, body.step, body.value)
    except (JobNotFound, LeaseNotFound, JobConflict) as exc:
        raise _translated(exc) from None
    return PruneAdvice(should_prune=prune)


@router.post("/{job_id}/trials/{number}/heartbeat", summary="Keep a trial's lease alive",
             responses=problem_responses(401, 404, 409, 422, 503))
def heartbeat_trial(job_id: Annotated[ResourceId, Path()], number: TrialNumber,
                    session: SessionDep, storage: OptunaStorageDep,
                    settings: SettingsDep) -> LeaseOut:
    try:
        expires = leases.heartbeat(session, storage, job_id, number, settings.lease_s)
    except (JobNotFound, LeaseNotFound, JobConflict) as exc:
        raise _translated(exc) from None
    return LeaseOut(number=number, lease_expires_at=expires)


@router.post("/{job_id}/trials/{number}/result", summary="Finish a trial",
             responses=problem_responses(401, 404, 409, 422, 503))
def finish_trial(job_id: Annotated[ResourceId, Path()], number: TrialNumber, body: TrialResult,
                 session: SessionDep, storage: OptunaStorageDep) -> LeasedTrialOut:
    try:
        trial = leases.tell(session, storage, job_id, number, body.outcome())
    except (JobNotFound, LeaseNotFound, JobConflict, ValueError) as exc:
        raise _translated(exc) from None
    return _leased_out(trial)
