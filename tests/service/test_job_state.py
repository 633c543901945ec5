"""Job state rules (service.jobs.state) on real databases, without worker processes."""

from __future__ import annotations

import time
from datetime import timedelta

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from service.core.models import Job, Result, utcnow
from service.core.storage import ask, open_optuna_storage
from service.jobs.state import (
    claim_trial_slot,
    create_job,
    fail_and_retry,
    finish_if_done,
    reconcile_slots,
)
from tuner import optuna_internals
from tuner.contract import retried_numbers


def _setup(url: str) -> tuple[sessionmaker[Session], optuna.storages.RDBStorage]:
    from service.core.db import create_engine_for, make_sessionmaker

    sessions = make_sessionmaker(create_engine_for(url))
    return sessions, open_optuna_storage(url)


def test_claims_never_exceed_the_budget(migrated_url: str) -> None:
    sessions, storage = _setup(migrated_url)
    with sessions() as session:
        job = create_job(session, storage, workload="rosenbrock", task=None, n_trials=3)
        claims = [claim_trial_slot(session, job.id) for _ in range(5)]
        assert claims == [True, True, True, False, False]
        session.refresh(job)
        assert job.status == "running" and job.started_at is not None


def test_leaked_slots_are_given_back_once_the_claim_is_old(migrated_url: str) -> None:
    sessions, storage = _setup(migrated_url)
    with sessions() as session:
        job = create_job(session, storage, workload="rosenbrock", task=None, n_trials=3)
        for _ in range(3):
            assert claim_trial_slot(session, job.id)
        study = optuna.load_study(study_name=job.study_name, storage=storage)
        trial = ask(study)  # one claim was used; two workers died before asking
        assert reconcile_slots(session, study, job.id, grace_s=60) == 0  # too recent to judge
        session.execute(sa.update(Job).where(Job.id == job.id)
                        .values(updated_at=utcnow() - timedelta(seconds=120)))
        session.commit()
        assert reconcile_slots(session, study, job.id, grace_s=60) == 2
        session.refresh(job)
        assert job.trials_claimed == 1
        study.tell(trial, 1.0)
        assert claim_trial_slot(session, job.id)


def test_retried_trials_do_not_count_and_the_result_is_written_once(migrated_url: str) -> None:
    sessions, storage = _setup(migrated_url)
    with sessions() as session:
        job = create_job(session, storage, workload="rosenbrock", task=None, n_trials=2,
                         optimizer_names=["adam"])
        study = optuna.load_study(study_name=job.study_name, storage=storage)
        assert claim_trial_slot(session, job.id)
        lost = ask(study)
        outcome = fail_and_retry(storage, optuna_internals.study_id(study), job.id,
                                 optuna_internals.trial_id(lost), "lost")
        assert outcome is not None and outcome.retried
        for value in (3.0, 2.0):
            assert claim_trial_slot(session, job.id)
            trial = ask(study)
            trial.set_user_attr("optimizer", "adam")
            trial.set_user_attr("hyperparameters", {"lr": 0.01})
            study.tell(trial, value)
        assert not claim_trial_slot(session, job.id)
        assert retried_numbers(study.trials) == {lost.number}
        assert finish_if_done(session, study, job.id)
        assert not finish_if_done(session, study, job.id)  # only the first call finishes it
        session.refresh(job)
        assert job.status == "completed"
        result = session.scalar(sa.select(Result).where(Result.job_id == job.id))
        assert result is not None
        assert (result.best_value, result.best_optimizer, result.trials_used) == (2.0, "adam", 2)


def test_a_completion_check_between_the_reapers_writes_never_finishes_a_job_short(
        migrated_url: str) -> None:
    """A worker reaps a lost trial while another checks whether the job is done. The check runs
    after every transaction of the reaper's storage (its connections going back to the pool),
    so it sees each state the reaper leaves behind: never the failure without its retry."""
    from service.runners.worker import Worker, WorkerConfig

    sessions, storage = _setup(migrated_url)  # the checking worker
    reaper = Worker(WorkerConfig(database_url=migrated_url, grace_period_s=1,
                                 heartbeat_interval_s=1))
    with sessions() as session:
        job = create_job(session, storage, workload="rosenbrock", task=None, n_trials=2,
                         optimizer_names=["adam"], max_retries=2)
        study = optuna.load_study(study_name=job.study_name, storage=storage)
        for value in (1.0, None):
            assert claim_trial_slot(session, job.id)
            trial = ask(study)
            trial.set_user_attr("optimizer", "adam")
            trial.set_user_attr("hyperparameters", {"lr": 0.01})
            if value is not None:
                study.tell(trial, value)
        lost = trial  # still running; its worker dies after one heartbeat
        storage.record_heartbeat(optuna_internals.trial_id(lost))
    # Past the reaper's 1 s grace period: SQLite's CURRENT_TIMESTAMP (Optuna's heartbeat clock)
    # keeps whole seconds, so a heartbeat can look up to 1 s younger than it is.
    time.sleep(2.2)

    finished_early: list[str] = []

    def check(*_: object) -> None:
        with sessions() as other:
            if finish_if_done(other, study, job.id):
                finished_early.append("finished while the reaper was mid-way")

    event.listen(reaper.storage.engine, "checkin", check)
    try:
        reaper.reap(reaper._active_jobs())
    finally:
        event.remove(reaper.storage.engine, "checkin", check)
        reaper.engine.dispose()
        reaper.storage.engine.dispose()
    assert not finished_early
    with sessions() as session:
        after = session.get(Job, job.id, populate_existing=True)
        assert after is not None and after.status == "running" and after.trials_claimed == 1
    trials = optuna.load_study(study_name=job.study_name, storage=storage).trials
    assert [t.state for t in trials[-2:]] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[-1].system_attrs["retry_history"] == [lost.number]
    assert trials[-1].params == lost.params


def test_a_trial_made_by_a_lost_ask_is_void_and_the_job_still_ends_exact(
        migrated_url: str) -> None:
    """An ask whose answer was lost in an outage leaves a running trial nobody runs (its worker
    gave the slot back). It never records a heartbeat: the reaper voids it, it counts toward
    nothing, and the job ends with exactly its budget and nothing running."""
    from service.runners.worker import Worker, WorkerConfig
    from tests.service.jobrun import one_thread, short_rosenbrock
    from tuner.contract import REASON_NEVER_RAN, is_void, trial_reason

    sessions, storage = _setup(migrated_url)
    with sessions() as session:
        job = create_job(session, storage, workload="rosenbrock", task=None, n_trials=2,
                         optimizer_names=["adam"], pruner="none")
    study = optuna.load_study(study_name=job.study_name, storage=storage)
    orphan = ask(study)  # no slot, no heartbeat: as after the lost answer
    with sessions() as session:
        assert claim_trial_slot(session, job.id)
    beating = ask(study)  # a worker's trial, with its heartbeat: lost, not void
    storage.record_heartbeat(optuna_internals.trial_id(beating))
    time.sleep(2.2)  # past the 1 s grace (SQLite's heartbeat clock keeps whole seconds)
    with one_thread(), short_rosenbrock():
        worker = Worker(WorkerConfig(database_url=migrated_url, grace_period_s=1,
                                     heartbeat_interval_s=1, poll_interval_s=0.02,
                                     max_trials=2))
        worker.reap(worker._active_jobs())
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        assert trials[orphan.number].state == TrialState.FAIL
        assert is_void(trials[orphan.number])
        assert trial_reason(trials[orphan.number]) == REASON_NEVER_RAN
        assert trials[beating.number].state == TrialState.FAIL  # stale heartbeat: reaped
        assert not is_void(trials[beating.number])
        worker.run()
    with sessions() as session:
        done = session.get(Job, job.id, populate_existing=True)
        assert done is not None and done.status == "completed"
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    counted = [t for t in study.get_trials(deepcopy=False)
               if t.number not in retried_numbers(study.trials) and not is_void(t)]
    assert sum(t.state.is_finished() for t in counted) == 2
