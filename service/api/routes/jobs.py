"""Tuning jobs: launch, list, watch (progress, best, per-optimizer summary), trials, cancel."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Body, Path, Query, Request, Response
from pydantic import BeforeValidator, ConfigDict, Field, field_validator

import optimizers
from optimizers import Schedule
from service.api.deps import HistoryDep, OptunaStorageDep, SessionDep, SettingsDep
from service.api.schemas import (
    DEFAULT_PAGE_SIZE,
    MAX_OFFSET,
    MAX_PAGE_SIZE,
    BodyModel,
    ClientId,
    JsonObject,
    Name,
    Namespace,
    OutFloat,
    Page,
    ResourceId,
    ResponseModel,
    ShortText,
    UseHistory,
    one_of_names,
)
from service.core.errors import ProblemError, problem_responses
from service.core.models import JOB_STATUSES, Job
from service.jobs import leases
from service.jobs.leases import LeasedTrial, LeaseNotFound
from service.jobs.state import (
    ACTIVE,
    MAX_TRIALS,
    JobConflict,
    JobNotFound,
    JobView,
    cancel_job,
    create_job,
    describe,
    get_job,
    trial_json,
)
from tuner.contract import SOURCE_SAMPLER, retried_numbers
from tuner.evidence.history import DEFAULT_NAMESPACE
from tuner.task import TaskDescription, WholeNumber, whole_number
from tuner.workloads import workload_names

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_TIMEOUT_S = 30 * 24 * 3600.0
MAX_SEED = 2**31 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED), BeforeValidator(whole_number)]


def _optimizer_list(schema: dict[str, Any]) -> None:
    """The ``optimizers`` list in the OpenAPI document: registered names, each at most once."""
    one_of_names(optimizers.names)(schema)
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "array":
            branch["uniqueItems"] = True


class JobCreate(BodyModel):
    """``POST /v1/jobs``: tune a workload (server-side trials) or a task (``workload: null``,
    client-evaluated trials)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            # A workload, or (workload null) a task: the rule launch_job enforces, stated.
            "anyOf": [{"properties": {"workload": {"type": "string"}}},
                      {"properties": {"task": {"type": "object"}}, "required": ["task"]}],
            "examples": [
                {"workload": "digits-mlp", "n_trials": 30, "seed": 0, "pruner": "median"},
                {"workload": "rosenbrock", "n_trials": 20,
                 "optimizers": ["adam", "sgd_momentum"]},
                {"workload": None, "n_trials": 20,
                 "task": {"model_family": "transformer", "num_parameters": 124_000_000}},
            ]},
    )

    workload: Name | None = Field(
        description="Registered workload, or null for ask/tell jobs.",
        json_schema_extra=one_of_names(workload_names))
    task: TaskDescription | None = Field(
        default=None, description="Defaults to the workload's own task description.")
    n_trials: WholeNumber = Field(ge=1, le=MAX_TRIALS,
                                  description="Exact number of finished trials.")
    timeout_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)
    optimizers: list[Name] | None = Field(
        default=None, min_length=1, max_length=32,
        description="Restrict the search to these optimizers (default: the prior's top 3).",
        json_schema_extra=_optimizer_list)
    seed: Seed | None = None
    pruner: Literal["median", "hyperband", "none"] = "median"
    max_retries: WholeNumber = Field(default=2, ge=0, le=10,
                             description="Retries of a trial whose worker died or whose lease "
                             "expired.")
    use_history: UseHistory = True
    namespace: Namespace = DEFAULT_NAMESPACE

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
    waiting: int = Field(description="Enqueued trials not started yet (0 once the job stopped).")
    cancelled: int = Field(default=0, description="Enqueued trials that will never run: the job "
                           "stopped (cancelled, out of time) before them.")
    retried: int = Field(description="Trials lost with their worker and run again.")


class Best(ResponseModel):
    value: OutFloat
    optimizer: str
    hyperparameters: JsonObject
    trial: int | None
    schedule: Schedule | None = Field(
        default=None, description="Its lr schedule (null for trials recorded before schedules).")
    source: str | None = Field(
        default=None, description="Where its configuration came from: 'rules', "
                                  "'history:<job id>' or 'sampler'.")


class OptimizerProgress(ResponseModel):
    trials: int
    completed: int
    pruned: int
    failed: int
    best_value: OutFloat
    best_hyperparameters: JsonObject
    best_schedule: Schedule | None = Field(
        default=None, description="The lr schedule of its best trial (null: none recorded).")


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
    namespace: str = Field(default=DEFAULT_NAMESPACE, description="Whose history it learns "
                           "from, and adds to when it completes.")
    use_history: bool = True


class TrialOut(ResponseModel):
    number: int
    state: str = Field(description="complete, pruned, fail, running, waiting (enqueued), or "
                       "cancelled (enqueued in a job that stopped before it ran).")
    value: OutFloat
    optimizer: str | None
    hyperparameters: JsonObject
    schedule: Schedule | None = Field(
        default=None, description="The lr schedule the trial trained with (lr is its peak); "
                                  "null for trials recorded before schedules.")
    reason: str | None
    retried: bool
    retry_of: int | None
    worker: str | None = Field(description="host:pid of the worker that ran it.")
    source: str = Field(default=SOURCE_SAMPLER, description="Where its configuration came "
                        "from: 'rules' (the prior's warm start), 'history:<job id>' (a past "
                        "job's best, tried first) or 'sampler'.")
    intermediate_values: dict[str, OutFloat]
    started_at: datetime | None
    completed_at: datetime | None


def job_out(view: JobView) -> JobOut:
    job, s = view.job, view.summary
    stopped = job.status not in ACTIVE  # its enqueued trials will never run
    best = None
    if s.best_optimizer is not None:
        best = Best(value=s.best_value, optimizer=s.best_optimizer,
                    hyperparameters=s.best_hyperparameters, trial=s.best_trial,
                    schedule=s.best_schedule, source=s.best_source)
    return JobOut(
        id=job.id, status=job.status, workload=job.workload,
        task=TaskDescription.model_validate(job.task), n_trials=job.n_trials,
        timeout_s=job.timeout_s, optimizers=job.optimizers, seed=job.seed, pruner=job.pruner,
        study_name=job.study_name, error=job.error, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at,
        progress=Progress(total=job.n_trials, finished=view.finished, completed=s.completed,
                          pruned=s.pruned, failed=s.failed, running=s.running,
                          waiting=0 if stopped else s.waiting,
                          cancelled=s.waiting if stopped else 0, retried=view.retried),
        best=best,
        per_optimizer={name: OptimizerProgress(**vars(o)) for name, o in s.per_optimizer.items()},
        prior=job.prior or [], namespace=job.namespace or DEFAULT_NAMESPACE,
        use_history=job.use_history is not False,
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
               history: HistoryDep, request: Request, response: Response) -> JobOut:
    if body.workload is not None and body.workload not in workload_names():
        raise _field_error(["body", "workload"], f"unknown workload {body.workload!r} "
                           f"(known: {', '.join(workload_names())})")
    if body.workload is None and body.task is None:
        raise _field_error(["body", "task"], "required when workload is null")
    for i, name in enumerate(body.optimizers or ()):
        if name not in optimizers.names():
            raise _field_error(["body", "optimizers", i], f"unknown optimizer {name!r}")
    evidence = history.pool(session, body.namespace) if body.use_history else None
    try:
        job = create_job(session, storage, workload=body.workload, task=body.task,
                         n_trials=body.n_trials, timeout_s=body.timeout_s,
                         optimizer_names=body.optimizers, seed=body.seed, pruner=body.pruner,
                         max_retries=body.max_retries, namespace=body.namespace,
                         use_history=body.use_history, evidence=evidence)
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
    trials = [TrialOut(**trial_json(t, retried)) for t in view.trials]
    if view.job.status not in ACTIVE:  # enqueued trials of a stopped job will never run
        for trial in trials:
            if trial.state == "waiting":
                trial.state = "cancelled"
    return trials


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

MAX_STEP = 10**9


class TrialAsk(BodyModel):
    model_config = ConfigDict(extra="forbid",
                              json_schema_extra={"examples": [{"client_id": "gpu-box-1:4242"}]})

    client_id: ClientId = Field(description="Who evaluates; asking again returns its open trial.")


class LeasedTrialOut(ResponseModel):
    job_id: str
    number: int
    client_id: str
    optimizer: str
    hyperparameters: dict[str, OutFloat]
    schedule: Schedule | None = Field(
        default=None,
        description="The lr schedule to train with: hyperparameters.lr is its peak. Build it "
                    "with optimizers.build_scheduler(optimizer, schedule, total_steps) and step "
                    "it after every optimizer step; 'none' (schedule-free) leaves the lr alone. "
                    "Null in jobs created before schedules.")
    state: str
    lease_expires_at: datetime


class TrialReport(BodyModel):
    model_config = ConfigDict(extra="forbid",
                              json_schema_extra={"examples": [{"step": 3, "value": 0.42}]})

    step: WholeNumber = Field(ge=0, le=MAX_STEP)
    value: float = Field(allow_inf_nan=False)


class PruneAdvice(ResponseModel):
    should_prune: bool


class LeaseOut(ResponseModel):
    number: int
    lease_expires_at: datetime


class TrialValue(BodyModel):
    """A trial that finished: its final value."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"value": 0.137}]})

    value: float = Field(allow_inf_nan=False)

    def outcome(self) -> dict[str, Any]:
        return {"value": self.value}


class TrialEnd(BodyModel):
    """A trial that ended without a value: failed or pruned, and why."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"state": "pruned", "reason": "should_prune"},
        {"state": "failed", "reason": "CUDA out of memory"}]})

    state: Literal["failed", "pruned"]
    reason: ShortText | None = None

    def outcome(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason}


TrialResult = Annotated[TrialValue | TrialEnd, Body(
    description='``{"value": x}`` for a finished trial, or ``{"state": "failed"|"pruned", '
                '"reason"}``: one or the other, never both.')]


def _leased_out(trial: LeasedTrial) -> LeasedTrialOut:
    lease = trial.lease
    return LeasedTrialOut(job_id=lease.job_id, number=lease.trial_number,
                          client_id=lease.client_id, optimizer=trial.optimizer,
                          hyperparameters=trial.hyperparameters, schedule=trial.schedule,
                          state=lease.state, lease_expires_at=lease.lease_expires_at)


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
             response_description="A new trial for the client.",
             responses={200: {"model": LeasedTrialOut,
                              "description": "The trial the client already holds (asked again)."},
                        **problem_responses(401, 404, 409, 413, 422, 503)})
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
