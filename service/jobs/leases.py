"""Client-evaluated trials (``workload: null`` jobs): ask, report, heartbeat, tell, under leases.

A client asks for a trial with its ``client_id`` and gets the optimizer and hyperparameters plus
a lease. It reports intermediate values (and learns whether to prune), sends heartbeats to keep
the lease, and finally posts a result. A lease that expires is reaped: the trial is failed with
reason ``lease expired`` (kept apart from trials that failed on their own) and its parameters are
offered again, at most the job's ``max_retries`` times along its retry chain, as for a trial
lost with its worker (:func:`service.jobs.state.fail_and_retry`). Budgets use the same slot counter
as server-side jobs (service.jobs.state).

Idempotency: asking again with the same ``client_id`` while its trial is open returns that trial;
posting the same result twice is harmless; a different result, or any result after the lease
expired, is a conflict.

Cost per request: the job's study is the process's loaded one (:func:`service.jobs.studies
.cached_study`), which rereads only new or unfinished trials; a heartbeat is one conditional
``UPDATE`` of the lease row. What still grows with the trials is Optuna's own work (the sampler
on ask, the pruner on report), which plain Optuna pays too.
"""

from __future__ import annotations

import logging
import math
import threading
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from service.core.models import Job, TrialLease, new_id, utcnow
from service.core.storage import ask as storage_ask
from service.jobs.state import (
    ACTIVE,
    JobConflict,
    JobNotFound,
    claim_trial_slot,
    deadline_passed,
    fail_and_retry,
    finish_if_done,
    get_job,
    release_trial_slot,
    study_name_for,
    void_trials,
)
from service.jobs.studies import study_cache
from tuner import optuna_internals
from tuner.contract import (
    REASON_DIVERGED,
    TRIAL_CLIENT,
    trial_hyperparameters,
    trial_optimizer,
    trial_schedule,
)
from tuner.trial import TrialEnd, end_trial, suggestion_attrs

log = logging.getLogger(__name__)

REASON_LEASE_EXPIRED = "lease expired"
REASON_DUPLICATE_ASK = "duplicate ask"
UNLEASED_VOID_AFTER_S = 60.0
UNBOUNDED = 10**9


# Optuna pops a waiting trial with SELECT ... FOR UPDATE, which SQLite ignores: two requests
# could take the same (re-offered or warm-start) trial. Asks on SQLite are serialized here.
_sqlite_ask_lock = threading.RLock()


class LeaseNotFound(LookupError):
    pass


def _ask_guard(session: Session) -> AbstractContextManager[Any]:
    return _sqlite_ask_lock if session.get_bind().dialect.name == "sqlite" else nullcontext()


@dataclass(frozen=True)
class LeasedTrial:
    lease: TrialLease
    optimizer: str
    hyperparameters: dict[str, float]
    schedule: dict[str, Any] | None = None  # None: a job created before schedules


def _study(storage: optuna.storages.RDBStorage, job: Job) -> optuna.Study:
    return study_cache(storage).study(job.study_name)


def _ask_and_tell_job(session: Session, job_id: str) -> Job:
    job = get_job(session, job_id)
    if job.workload is not None:
        raise JobConflict(f"job {job_id} runs its trials on workers (workload {job.workload!r})")
    return job


def leased(lease: TrialLease, trial: optuna.trial.FrozenTrial) -> LeasedTrial:
    """The leased trial as recorded: optimizer, hyperparameters, schedule."""
    return LeasedTrial(lease, str(trial_optimizer(trial)), trial_hyperparameters(trial),
                       trial_schedule(trial))


def _leased(lease: TrialLease, study: optuna.Study) -> LeasedTrial:
    return leased(lease, optuna_internals.stored_trial(study, lease.trial_id))


def ask(session: Session, storage: optuna.storages.RDBStorage, job_id: str, client_id: str,
        lease_s: float) -> tuple[LeasedTrial, bool]:
    """The client's open trial, or a new one; ``(trial, created)``. JobConflict (409) when the
    job is not active or has no trial left to give."""
    job = _ask_and_tell_job(session, job_id)
    study = _study(storage, job)
    reap_expired(session, storage, study, job)
    open_lease = session.scalar(sa.select(TrialLease).where(
        TrialLease.job_id == job_id, TrialLease.client_id == client_id,
        TrialLease.state == "open"))
    if open_lease is not None:
        return _leased(open_lease, study), False
    if job.status not in ACTIVE:
        raise JobConflict(f"job {job_id} is {job.status}")
    if deadline_passed(job):  # as workers do: no new trial once the job's time is up
        finish_if_done(session, study, job_id)
        raise JobConflict(f"job {job_id} is out of time (timeout_s {job.timeout_s:g}): no new "
                          "trials")
    if not claim_trial_slot(session, job_id):
        raise JobConflict(f"job {job_id} has no trial left to give")
    with _ask_guard(session):
        try:
            trial = storage_ask(study)
            choice = study_cache(storage).plan(job.study_name).suggest(trial)
        except Exception:
            release_trial_slot(session, job_id)
            raise
        optuna_internals.set_user_attrs(storage, optuna_internals.trial_id(trial),
                             {**suggestion_attrs(choice, trial), TRIAL_CLIENT: client_id})
        now = utcnow()
        lease = TrialLease(id=new_id(), job_id=job_id, trial_number=trial.number,
                           trial_id=optuna_internals.trial_id(trial), client_id=client_id,
                           state="open",
                           lease_expires_at=now + timedelta(seconds=lease_s), created_at=now,
                           updated_at=now)
        session.add(lease)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            taken = session.scalar(sa.select(TrialLease.id).where(
                TrialLease.job_id == job_id, TrialLease.trial_number == trial.number))
            handed_back = False
            if taken is None:
                # The same client asked twice at once and keeps the first trial. This one never
                # ran: fail it and offer its parameters (and its slot) again, so it does not
                # count toward the budget.
                lost = fail_and_retry(storage, optuna_internals.study_id(study), job_id,
                                      optuna_internals.trial_id(trial), REASON_DUPLICATE_ASK,
                                      max_retries=UNBOUNDED)
                handed_back = lost is not None and lost.retried
            # else another request took the same waiting trial first: it is theirs, not ours
            if not handed_back:
                release_trial_slot(session, job_id)
            return ask(session, storage, job_id, client_id, lease_s)
    study_cache(storage).keep_trial(trial)
    return LeasedTrial(lease, choice.optimizer, choice.hyperparameters,
                       None if choice.schedule is None else choice.schedule.to_dict()), True


def _lease(session: Session, job_id: str, number: int) -> TrialLease:
    lease = session.scalar(sa.select(TrialLease).where(
        TrialLease.job_id == job_id, TrialLease.trial_number == number))
    if lease is None:
        get_job(session, job_id)  # JobNotFound first, if that is what is missing
        raise LeaseNotFound(f"job {job_id} has no client trial {number}")
    return lease


def _check_open(session: Session, storage: optuna.storages.RDBStorage, lease: TrialLease) -> None:
    """JobConflict unless ``lease`` is open and unexpired; an expired one is reaped first."""
    if lease.state == "open" and lease.lease_expires_at <= utcnow():
        job = get_job(session, lease.job_id)
        reap_expired(session, storage, _study(storage, job), job)
        session.refresh(lease)
    if lease.state == "expired":
        raise JobConflict(f"trial {lease.trial_number}: the lease expired; the trial was failed")
    if lease.state != "open":
        raise JobConflict(f"trial {lease.trial_number} is already {lease.state}")


def report(session: Session, storage: optuna.storages.RDBStorage, job_id: str, number: int,
           step: int, value: float) -> bool:
    """Record an intermediate value; True when the job's pruner says stop (or it was
    cancelled)."""
    found = session.execute(
        sa.select(TrialLease, Job.status).join(Job, Job.id == TrialLease.job_id)
        .where(TrialLease.job_id == job_id, TrialLease.trial_number == number)).first()
    lease, status = found if found is not None else (_lease(session, job_id, number), None)
    _check_open(session, storage, lease)
    trial = study_cache(storage).trial(study_name_for(job_id), lease.trial_id)
    trial.report(value, step)
    return status not in ACTIVE or trial.should_prune()


def heartbeat(session: Session, storage: optuna.storages.RDBStorage, job_id: str,
              number: int, lease_s: float) -> datetime:
    """Extend the trial's lease by ``lease_s`` from now; returns when it expires. One
    conditional ``UPDATE`` while the lease is open and unexpired; otherwise 404 or 409."""
    now = utcnow()
    expires = now + timedelta(seconds=lease_s)
    extended = session.execute(
        sa.update(TrialLease).where(TrialLease.job_id == job_id,
                                    TrialLease.trial_number == number,
                                    TrialLease.state == "open",
                                    TrialLease.lease_expires_at > now)
        .values(lease_expires_at=expires, updated_at=now)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if extended:
        return expires
    lease = _lease(session, job_id, number)
    _check_open(session, storage, lease)  # raises: why the lease could not be extended
    return heartbeat(session, storage, job_id, number, lease_s)  # it was extended meanwhile


def tell(session: Session, storage: optuna.storages.RDBStorage, job_id: str, number: int,
         outcome: dict[str, Any]) -> LeasedTrial:
    """Finish the trial with ``{"value": x}`` or ``{"state": "failed"|"pruned", "reason"}``.

    Reason ``diverged`` is recorded as the trial runner records it (``tuner.trial``): pruned,
    with ``nan`` as its last intermediate value, so the sampler learns to avoid the region.

    Repeating the same outcome returns the trial unchanged; another outcome, or one after the
    lease expired, raises JobConflict.
    """
    lease = _lease(session, job_id, number)  # a lease exists only for an ask/tell job
    cache = study_cache(storage)
    study = cache.study(study_name_for(job_id))
    if lease.state not in ("open", "expired") and lease.outcome == outcome:
        return _leased(lease, study)
    _check_open(session, storage, lease)
    if "value" in outcome:
        value = float(outcome["value"])
        if not math.isfinite(value):  # schemas reject this; keep the store safe regardless
            raise ValueError("value: must be finite")
        end, lease_state = TrialEnd(TrialState.COMPLETE, value), "completed"
    else:
        reason = outcome.get("reason") or str(outcome["state"])
        # diverged is recorded as the trial runner records it: pruned, whatever the client said
        lease_state = "pruned" if reason == REASON_DIVERGED else str(outcome["state"])
        state = TrialState.FAIL if lease_state == "failed" else TrialState.PRUNED
        end = TrialEnd(state, reason=reason)
    claimed = session.execute(
        sa.update(TrialLease).where(TrialLease.id == lease.id, TrialLease.state == "open")
        .values(state=lease_state, outcome=outcome, updated_at=utcnow())
    ).rowcount  # type: ignore[attr-defined]
    session.commit()  # before Optuna writes: SQLite allows one writer at a time
    if not claimed:  # a concurrent request finished or reaped it first
        session.refresh(lease)
        return tell(session, storage, job_id, number, outcome)
    try:
        told = end_trial(study, cache.trial(study.study_name, lease.trial_id), end,
                         skip_if_finished=False)
    except Exception:
        session.execute(sa.update(TrialLease).where(TrialLease.id == lease.id)
                        .values(state="open", outcome=None, updated_at=utcnow()))
        session.commit()
        raise
    cache.drop_trial(lease.trial_id)
    for key, stored in (("state", lease_state), ("outcome", outcome)):  # as just written
        set_committed_value(lease, key, stored)
    finish_if_done(session, study, job_id)
    return leased(lease, told)


def reap_expired(session: Session, storage: optuna.storages.RDBStorage, study: optuna.Study,
                 job: Job) -> int:
    """Fail trials whose lease expired (reason ``lease expired``) and offer their parameters
    again within the job's ``max_retries``, each in one transaction
    (:func:`service.jobs.state.fail_and_retry`); returns how many were reaped."""
    expired = session.scalars(sa.select(TrialLease).where(
        TrialLease.job_id == job.id, TrialLease.state == "open",
        TrialLease.lease_expires_at <= utcnow())).all()
    reaped = _void_unleased(session, storage, study, job)
    for lease in expired:
        lost = fail_and_retry(storage, optuna_internals.study_id(study), job.id, lease.trial_id,
                              REASON_LEASE_EXPIRED, lease_id=lease.id)
        if lost is None:
            continue
        study_cache(storage).drop_trial(lease.trial_id)
        log.warning("job %s trial %d: lease of %s expired (%s)", job.id, lease.trial_number,
                    lease.client_id, "offered again" if lost.retried else "not retried")
        reaped += 1
    if reaped:
        finish_if_done(session, study, job.id)
    return reaped


def _void_unleased(session: Session, storage: optuna.storages.RDBStorage, study: optuna.Study,
                   job: Job) -> int:
    """Void the job's running trials that have no lease ``UNLEASED_VOID_AFTER_S`` after they
    were made: an ask writes its lease in the same request, so such a trial was made by an ask
    whose answer was lost in a database outage (the slot went back; no client holds it)."""
    cutoff = datetime.now() - timedelta(seconds=UNLEASED_VOID_AFTER_S)  # Optuna's local time
    old = {optuna_internals.trial_id(t) for t in study.get_trials(
        deepcopy=False, states=(TrialState.RUNNING,))
        if t.datetime_start is not None and t.datetime_start < cutoff}
    if not old:
        return 0
    leased = set(session.scalars(sa.select(TrialLease.trial_id).where(
        TrialLease.job_id == job.id, TrialLease.trial_id.in_(old))))
    return void_trials(storage, study, job.id, sorted(old - leased))


def reap_all(session: Session, storage: optuna.storages.RDBStorage) -> int:
    """Reap every job's expired leases (the API's background sweep)."""
    job_ids = session.scalars(sa.select(TrialLease.job_id).distinct().where(
        TrialLease.state == "open", TrialLease.lease_expires_at <= utcnow())).all()
    total = 0
    for job_id in job_ids:
        try:
            job = get_job(session, job_id)
        except JobNotFound:
            continue
        total += reap_expired(session, storage, _study(storage, job), job)
    return total
