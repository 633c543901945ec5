"""The one place that owns job state: create, claim trial slots, reap lost trials, cancel,
finish, and describe a job.

A job is a row in ``jobs`` plus an Optuna study in the same database. Budgets are exact however
many workers run: a worker may only ask Optuna for a trial after it claimed a slot with one
atomic ``UPDATE jobs SET trials_claimed = trials_claimed + 1 WHERE trials_claimed < n_trials``.
A trial lost with its worker (no heartbeat for the grace period) or with its client (lease
expired) is failed, enqueued again (same parameters, at most ``max_retries`` times along its
retry chain) and its slot given back, all in one transaction (:func:`fail_and_retry`), so the
retry runs under the same budget and no completion check ever sees the failure without its
retry. The job finishes when ``n_trials`` trials have finished, not counting the retried ones.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.orm import Session

from service.core.models import Job, JobStatus, Result, TrialLease, new_id, utcnow
from service.jobs.history import outcome_of, record_job
from service.jobs.studies import cached_study
from tuner import optuna_internals
from tuner.contract import (
    REASON_NEVER_RAN,
    REASON_WORKER_LOST,
    STUDY_JOB_ID,
    TRIAL_REASON,
    TRIAL_WORKER,
    VOID,
    finite,
    is_void,
    retried_numbers,
    retry_history,
    retry_of,
    retry_system_attrs,
    trial_hyperparameters,
    trial_optimizer,
    trial_reason,
    trial_schedule,
    trial_source,
)
from tuner.evidence.history import DEFAULT_NAMESPACE
from tuner.evidence.records import EvidencePool
from tuner.prior import Recommendation
from tuner.task import TaskDescription
from tuner.tuning import PrunerName, StudySummary, create_study, summarize
from tuner.workloads import get_workload

log = logging.getLogger(__name__)

MAX_TRIALS = 10_000
ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


class JobNotFound(LookupError):
    pass


class JobConflict(Exception):
    """The job's state does not allow the request (cancel a finished job, ...)."""


def study_name_for(job_id: str) -> str:
    return f"optpilot-job-{job_id}"


# -- creation -------------------------------------------------------------------------------


def create_job(
    session: Session,
    storage: optuna.storages.BaseStorage,
    *,
    workload: str | None,
    task: TaskDescription | None,
    n_trials: int,
    timeout_s: float | None = None,
    optimizer_names: Sequence[str] | None = None,
    seed: int | None = None,
    pruner: PrunerName = "median",
    max_retries: int = 2,
    namespace: str = DEFAULT_NAMESPACE,
    use_history: bool = True,
    evidence: EvidencePool | None = None,
) -> Job:
    """Create the study (prior, plan, warm start) and the job row; nothing is left half-made.

    ``evidence``: the namespace's history as a pool (``service.jobs.history.HistoryPools``),
    which the prior and the warm start learn from; None (or ``use_history`` false): the
    published trainings alone.

    ValueError (naming the field) for an unknown workload or optimizer or a missing task.
    """
    wl = get_workload(workload) if workload is not None else None
    if task is None and wl is None:
        raise ValueError("task: required when workload is null")
    job_id = new_id()
    name = study_name_for(job_id)
    study, recommendation = create_study(
        storage, study_name=name, workload=wl, task=task, n_trials=n_trials,
        optimizer_names=optimizer_names, seed=seed, pruner=pruner,
        evidence=evidence if use_history else None,
    )
    try:
        study.set_user_attr(STUDY_JOB_ID, job_id)
        job = Job(
            id=job_id, status=JobStatus.QUEUED.value, workload=workload,
            task=recommendation.task.model_dump(mode="json"), n_trials=n_trials,
            timeout_s=timeout_s, optimizers=list(optimizer_names) if optimizer_names else None,
            seed=seed, pruner=pruner, study_name=name, trials_claimed=0,
            max_retries=max_retries, prior=prior_json(recommendation), namespace=namespace,
            use_history=use_history,
        )
        session.add(job)
        session.commit()
    except BaseException:
        session.rollback()
        optuna.delete_study(study_name=name, storage=storage)
        raise
    return job


def prior_json(recommendation: Recommendation) -> list[dict[str, Any]]:
    return [c.model_dump(mode="json") for c in recommendation.candidates]


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def cancel_job(session: Session, job_id: str) -> Job:
    """Stop new trials; running ones end at their next report. Cancelling twice is harmless."""
    job = get_job(session, job_id)
    if job.status == JobStatus.CANCELLED.value:
        return job
    updated = session.execute(
        sa.update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE))
        .values(status=JobStatus.CANCELLED.value, finished_at=utcnow(), updated_at=utcnow())
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    session.refresh(job)
    if not updated and job.status != JobStatus.CANCELLED.value:
        raise JobConflict(f"job {job_id} is already {job.status}")
    return job


# -- trial accounting -----------------------------------------------------------------------




def counted_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count toward the budget: not the retried ones, not the void ones."""
    retried = retried_numbers(trials)
    return [t for t in trials if t.number not in retried and not is_void(t)]


def finished_count(trials: Sequence[FrozenTrial]) -> int:
    return sum(1 for t in counted_trials(trials) if t.state.is_finished())


def deadline_passed(job: Job, now: datetime | None = None) -> bool:
    if job.timeout_s is None or job.started_at is None:
        return False
    return (now or utcnow()) >= job.started_at + timedelta(seconds=job.timeout_s)


def claim_trial_slot(session: Session, job_id: str) -> bool:
    """Atomically take one trial of the job's budget; False when none is left or it stopped."""
    now = utcnow()
    claimed = session.execute(
        sa.update(Job)
        .where(Job.id == job_id, Job.status.in_(ACTIVE), Job.trials_claimed < Job.n_trials)
        .values(trials_claimed=Job.trials_claimed + 1, status=JobStatus.RUNNING.value,
                started_at=sa.func.coalesce(Job.started_at, now), updated_at=now)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    return bool(claimed)


def release_trial_slot(session: Session, job_id: str) -> None:
    session.execute(
        sa.update(Job).where(Job.id == job_id, Job.trials_claimed > 0)
        .values(trials_claimed=Job.trials_claimed - 1, updated_at=utcnow())
    )
    session.commit()


def reconcile_slots(session: Session, study: optuna.Study, job_id: str, grace_s: float) -> int:
    """Give back slots claimed by a worker that died between its claim and its ask.

    Only a job whose whole budget is claimed can stall on such a slot; its claims must then match
    the trials asked (running or finished, retries aside). The row's ``updated_at`` guards
    against a claim made meanwhile. Returns the number of slots given back.
    """
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.status not in ACTIVE or job.trials_claimed < job.n_trials:
        return 0
    if job.updated_at > utcnow() - timedelta(seconds=grace_s):
        return 0
    asked = sum(1 for t in counted_trials(study.get_trials(deepcopy=False))
                if t.state != TrialState.WAITING)
    leaked = job.trials_claimed - asked
    if leaked <= 0:
        return 0
    given_back = session.execute(
        sa.update(Job).where(Job.id == job_id, Job.trials_claimed == job.trials_claimed,
                             Job.updated_at == job.updated_at)
        .values(trials_claimed=asked, updated_at=utcnow())
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if given_back:
        log.warning("job %s: %d claimed slot(s) had no trial; given back", job_id, leaked)
    return leaked if given_back else 0


def should_stop(session: Session, job_id: str) -> bool:
    """Polled by running trials at every report: cancelled, or the job's time is up."""
    job = session.get(Job, job_id, populate_existing=True)
    return job is None or job.status != JobStatus.RUNNING.value or deadline_passed(job)


@dataclass(frozen=True)
class LostTrial:
    number: int
    retried: bool


def fail_and_retry(storage: optuna.storages.RDBStorage, study_id: int, job_id: str,
                   trial_id: int, reason: str, *, lease_id: str | None = None,
                   max_retries: int | None = None) -> LostTrial | None:
    """Fail a running trial with ``reason``, enqueue its parameters again and give its slot
    back, in one transaction; None when the trial was no longer running (someone else failed
    or finished it first).

    The retry is made when the job is still active and the trial's retry chain is at most
    ``max_retries`` long (default: the job's ``max_retries``). ``lease_id``: the trial's lease
    (client-evaluated trials), marked expired in the same transaction; nothing happens unless
    it was still open. The retry carries ``failed_trial``/``retry_history`` system attributes,
    as Optuna's ``RetryFailedTrialCallback`` writes them, so :func:`retried_numbers` can tell.

    One transaction matters: a completion check (:func:`finish_if_done`) that saw the failure
    without the retry would count the lost trial as finished and complete the job one short.
    It goes through Optuna's own storage helpers (``tuner.optuna_internals``: the study row lock
    that numbers new trials, the trial template copy), on Optuna's connection, with the job row
    in the same transaction.
    """
    with optuna_internals.transaction(storage) as session:
        row, trial = optuna_internals.lock_trial(session, storage, study_id, trial_id)
        if lease_id is not None:
            expired = session.execute(
                sa.update(TrialLease).where(TrialLease.id == lease_id,
                                            TrialLease.state == "open")
                .values(state="expired", updated_at=utcnow())
            ).rowcount  # type: ignore[attr-defined]
            if not expired:
                session.rollback()
                return None
        if row.state != TrialState.RUNNING:
            return None
        optuna_internals.set_user_attr(session, storage, trial_id, TRIAL_REASON, reason)
        row.state = TrialState.FAIL
        row.datetime_complete = datetime.now()  # Optuna's convention: naive local time
        job = session.get(Job, job_id, with_for_update=True)
        history = [*retry_history(trial), trial.number]
        limit = max_retries if max_retries is not None else (job.max_retries if job else 0)
        retried = job is not None and job.status in ACTIVE and len(history) <= limit
        if retried:
            optuna_internals.enqueue(session, storage, study_id, _retry_trial(trial))
            session.execute(
                sa.update(Job).where(Job.id == job_id, Job.trials_claimed > 0)
                .values(trials_claimed=Job.trials_claimed - 1, updated_at=utcnow()))
        return LostTrial(trial.number, retried)


def _retry_trial(trial: FrozenTrial) -> FrozenTrial:
    return optuna.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k != TRIAL_REASON},
        system_attrs=retry_system_attrs(trial),
    )


def void_unstarted_trials(storage: optuna.storages.RDBStorage, study: optuna.Study,
                          job_id: str, grace_s: float) -> int:
    """Fail, as void, the job's running trials that never recorded a heartbeat within
    ``grace_s`` of their start: trials made by an ask whose answer was lost in a database
    outage. Their worker went on without them and gave its slot back (or, when it failed
    after the ask, :func:`reconcile_slots` gives it back), so they count toward nothing and
    are not retried. A worker records its trial's first heartbeat right after asking."""
    ids = optuna_internals.unbeaten_trial_ids(storage, optuna_internals.study_id(study), grace_s)
    return void_trials(storage, study, job_id, ids)


def void_trials(storage: optuna.storages.RDBStorage, study: optuna.Study, job_id: str,
                trial_ids: Sequence[int]) -> int:
    """Fail the still-running trials of ``trial_ids`` as void (they never ran: no budget, no
    retry), each in one transaction; returns how many."""
    study_id = optuna_internals.study_id(study)
    voided = 0
    for trial_id in trial_ids:
        with optuna_internals.transaction(storage) as session:
            row, trial = optuna_internals.lock_trial(session, storage, study_id, trial_id)
            if row.state != TrialState.RUNNING:
                continue
            optuna_internals.set_user_attr(session, storage, trial_id, TRIAL_REASON,
                                           REASON_NEVER_RAN)
            optuna_internals.set_system_attr(session, storage, trial_id, VOID, True)
            row.state = TrialState.FAIL
            row.datetime_complete = datetime.now()  # Optuna's convention: naive local time
        voided += 1
        log.warning("job %s trial %d: %s", job_id, trial.number, REASON_NEVER_RAN)
    return voided


def reap_lost_trials(storage: optuna.storages.RDBStorage, study: optuna.Study,
                     job_id: str) -> int:
    """Fail and retry (:func:`fail_and_retry`) the job's running trials whose worker sent no
    heartbeat for the storage's grace period, and void those that never sent one
    (:func:`void_unstarted_trials`); returns how many this call reaped."""
    study_id = optuna_internals.study_id(study)
    grace = storage.grace_period or 2 * (storage.heartbeat_interval or 0)
    reaped = void_unstarted_trials(storage, study, job_id, grace)
    for trial_id in optuna_internals.stale_trial_ids(storage, study_id):
        lost = fail_and_retry(storage, study_id, job_id, trial_id, REASON_WORKER_LOST)
        if lost is not None:
            reaped += 1
            log.warning("job %s trial %d lost its worker (%s)", job_id, lost.number,
                        "retried" if lost.retried else "not retried")
    return reaped


# -- finishing ------------------------------------------------------------------------------


def finish_if_done(session: Session, study: optuna.Study, job_id: str) -> bool:
    """Complete (or fail) the job once its budget is spent or its time is up; write its result.

    Safe to call from every worker: only the one whose status update wins writes the result.
    """
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.status not in ACTIVE:
        return False
    if job.trials_claimed < job.n_trials and not deadline_passed(job):
        return False  # finished trials never outnumber claimed slots: no need to load them
    trials = study.get_trials(deepcopy=False)
    counted = counted_trials(trials)
    done = sum(1 for t in counted if t.state.is_finished())
    running = sum(1 for t in counted if t.state == TrialState.RUNNING)
    out_of_time = deadline_passed(job) and running == 0
    if done < job.n_trials and not out_of_time:
        return False
    summary = summarize(counted, study.direction.name.lower())
    status = JobStatus.COMPLETED if summary.completed else JobStatus.FAILED
    error = None if summary.completed else _failure_reason(counted)
    if out_of_time and done < job.n_trials:
        error = f"timeout after {done} of {job.n_trials} trials" + (f"; {error}" if error else "")
    now = utcnow()
    won = session.execute(
        sa.update(Job).where(Job.id == job_id, Job.status.in_(ACTIVE))
        .values(status=status.value, finished_at=now, updated_at=now, error=error)
    ).rowcount  # type: ignore[attr-defined]
    if not won:
        session.rollback()
        return False
    if status == JobStatus.COMPLETED:
        result = result_row(job, summary, study, done)
        session.add(result)
        record_job(session, outcome_of(job, summary, result.metric, done, now))
    session.commit()
    log.info("job %s %s: %d trials, best %s", job_id, status.value, done, summary.best_value)
    return True


def _failure_reason(trials: Sequence[FrozenTrial]) -> str:
    reasons = [str(t.user_attrs.get(TRIAL_REASON, REASON_WORKER_LOST)) for t in trials
               if t.state != TrialState.COMPLETE]
    common = max(set(reasons), key=reasons.count) if reasons else "no trial ran"
    return f"no trial completed (most common reason: {common})"


def result_row(job: Job, summary: StudySummary, study: optuna.Study, trials_used: int) -> Result:
    task = TaskDescription.model_validate(job.task)
    metric = get_workload(job.workload).metric if job.workload else "value"
    prior_top = job.prior[0]["optimizer"] if job.prior else None
    return Result(
        job_id=job.id, workload=job.workload, model_family=task.model_family,
        task_type=task.task_type, num_parameters=task.num_parameters,
        task=task.model_dump(mode="json"), metric=metric,
        direction=study.direction.name.lower(),
        best_value=finite(summary.best_value), best_optimizer=summary.best_optimizer,
        best_hyperparameters=summary.best_hyperparameters,
        per_optimizer={name: {**vars(s), "best_value": finite(s.best_value)}
                       for name, s in summary.per_optimizer.items()},
        trials_used=trials_used, prior_top=prior_top,
    )


# -- views ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobView:
    job: Job
    summary: StudySummary
    finished: int
    retried: int
    trials: list[FrozenTrial]


def describe(job: Job, storage: optuna.storages.BaseStorage) -> JobView:
    """The job with its study's counts, best trial and per-optimizer summary. The study is the
    process's loaded one (:func:`service.jobs.studies.cached_study`): only trials that changed since
    the last view are read."""
    try:
        study = cached_study(storage, job.study_name)
        trials = study.get_trials(deepcopy=False)
        direction = study.direction.name.lower()
    except KeyError:  # study deleted under us: show the row alone
        trials, direction = [], "minimize"
    counted = counted_trials(trials)
    summary = summarize(counted, direction)
    return JobView(job, summary, sum(1 for t in counted if t.state.is_finished()),
                   len(trials) - len(counted), trials)




def trial_json(trial: FrozenTrial, retried: set[int]) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": finite(trial.value) if trial.state == TrialState.COMPLETE else None,
        "optimizer": trial_optimizer(trial),
        "hyperparameters": trial_hyperparameters(trial),
        "schedule": trial_schedule(trial),
        "reason": trial_reason(trial),
        "retried": trial.number in retried,
        "worker": trial.user_attrs.get(TRIAL_WORKER),
        "source": trial_source(trial),
        "retry_of": retry_of(trial),
        "intermediate_values": {str(k): finite(v) for k, v in
                                sorted(trial.intermediate_values.items())},
        "started_at": _utc(trial.datetime_start), "completed_at": _utc(trial.datetime_complete),
    }


def _utc(moment: datetime | None) -> datetime | None:
    """Optuna records naive local times; the API speaks aware UTC."""
    return None if moment is None else moment.astimezone(UTC)
