"""The private parts of Optuna that optpilot relies on, in one place.

Optuna's public API has no way to fail a trial and enqueue its retry in one transaction, to write
several attributes of a trial in one, or to list the trials whose heartbeat went stale; its
``RDBStorage`` has helpers for each (the study-row lock that numbers new trials, the template
copy of an enqueued trial), used here on Optuna's own connection. Everything else in optpilot
goes through the public API. These were written against Optuna 4 (the helpers are unchanged
since Optuna 2; pyproject keeps Optuna below 6), and the job-state, lease and outage tests
exercise every one of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages._rdb import models as rdb_models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.orm import Session


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id


def stored_trial(study: optuna.Study, trial_id: int) -> FrozenTrial:
    """The trial as stored now (not the study's cached copy)."""
    return study._storage.get_trial(trial_id)


@contextmanager
def transaction(storage: optuna.storages.RDBStorage) -> Iterator[Session]:
    """One transaction on the storage's own connection: committed at the end, rolled back on
    an exception. Rows of other tables (the service's) may be written in it too."""
    with _create_scoped_session(storage.scoped_session) as session:
        yield session


def lock_trial(session: Session, storage: optuna.storages.RDBStorage, study_id: int,
               trial_id: int) -> tuple[Any, FrozenTrial]:
    """Lock the study row (as Optuna does before numbering a new trial) and the trial row;
    returns the trial's row, whose ``state`` may be set, and the trial as it stands."""
    rdb_models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
    row = rdb_models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
    return row, storage._build_frozen_trial_from_trial_model(row)


def set_user_attr(session: Session, storage: optuna.storages.RDBStorage, trial_id: int,
                  key: str, value: Any) -> None:
    """A trial's user attribute, written in ``session``'s transaction."""
    storage._set_trial_attr_without_commit(session, rdb_models.TrialUserAttributeModel,
                                           trial_id, key, value)


def set_user_attrs(storage: optuna.storages.RDBStorage, trial_id: int,
                   attrs: dict[str, Any]) -> None:
    """Several user attributes of a trial in one transaction (Optuna's ``set_user_attr``
    makes one per attribute)."""
    with transaction(storage) as session:
        for key, value in attrs.items():
            set_user_attr(session, storage, trial_id, key, value)


def enqueue(session: Session, storage: optuna.storages.RDBStorage, study_id: int,
            template: FrozenTrial) -> None:
    """A new (waiting) trial copied from ``template``, in ``session``'s transaction."""
    storage._get_prepared_new_trial(study_id, template, session)


def stale_trial_ids(storage: optuna.storages.RDBStorage, study_id: int) -> list[int]:
    """Running trials whose last heartbeat is older than the storage's grace period."""
    return list(storage._get_stale_trial_ids(study_id))


def unbeaten_trial_ids(storage: optuna.storages.RDBStorage, study_id: int,
                       older_than_s: float) -> list[int]:
    """Running trials that never recorded a heartbeat, started more than ``older_than_s``
    ago. Optuna's own staleness check passes them over."""
    trials: Any = rdb_models.TrialModel  # Optuna's models are not typed for SQL expressions
    beats: Any = rdb_models.TrialHeartbeatModel
    if hasattr(trials, "_datetime_start_utc"):  # Optuna 5 stores naive UTC
        started = trials._datetime_start_utc
        cutoff = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=older_than_s)
    else:  # Optuna 4: naive local time
        started = trials.datetime_start
        cutoff = datetime.now() - timedelta(seconds=older_than_s)
    with transaction(storage) as session:
        rows = session.execute(
            sa.select(trials.trial_id)
            .where(trials.study_id == study_id, trials.state == TrialState.RUNNING,
                   started < cutoff,
                   ~sa.exists().where(beats.trial_id == trials.trial_id)))
        return [int(trial_id) for (trial_id,) in rows]


def set_system_attr(session: Session, storage: optuna.storages.RDBStorage, trial_id: int,
                    key: str, value: Any) -> None:
    """A trial's system attribute, written in ``session``'s transaction."""
    storage._set_trial_attr_without_commit(session, rdb_models.TrialSystemAttributeModel,
                                           trial_id, key, value)
