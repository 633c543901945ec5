"""The process's one Optuna storage, on the service database (one per process).

Heartbeats are on, so a trial whose worker died is noticed after ``grace_period_s`` (the job
domain, ``service.jobs.state.reap_lost_trials``, fails and retries it). The studies loaded from
the storage are the job domain's too (``service.jobs.studies``).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
from fastapi import FastAPI
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Connection, Engine, event, make_url

from service.core.db import SERVER_POOL, is_sqlite, take_turns_writing
from service.core.errors import database_error_text, database_unavailable

DEFAULT_HEARTBEAT_INTERVAL_S = 10
# Generous: a live worker whose heartbeat waits on a busy SQLite file must not be taken for lost.
DEFAULT_GRACE_PERIOD_S = 60
MAX_OUTAGE_BACKOFF_S = 2.0

log = logging.getLogger(__name__)
T = TypeVar("T")


def open_optuna_storage(
    url: str,
    *,
    heartbeat_interval_s: int = DEFAULT_HEARTBEAT_INTERVAL_S,
    grace_period_s: int = DEFAULT_GRACE_PERIOD_S,
    sqlite_busy_timeout_s: float = 30.0,
    outage_wait_s: float | None = None,
) -> optuna.storages.RDBStorage:
    """The storage; with ``outage_wait_s``, a :class:`PatientStorage` (workers)."""
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True, **SERVER_POOL}
    if is_sqlite(url):
        engine_kwargs = {"connect_args": {"timeout": sqlite_busy_timeout_s}}
    kind = optuna.storages.RDBStorage if outage_wait_s is None else PatientStorage
    with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = kind(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval_s,
            grace_period=grace_period_s,
        )
    if isinstance(storage, PatientStorage) and outage_wait_s is not None:
        storage.outage_wait_s = outage_wait_s
    if is_sqlite(url):
        _serialize_sqlite_transactions(storage.engine, sqlite_busy_timeout_s)
        database = make_url(url).database
        if database and database != ":memory:":
            take_turns_writing(storage.engine, database, sqlite_busy_timeout_s)
    return storage


class PatientStorage(optuna.storages.RDBStorage):
    """An RDBStorage whose calls during a running trial wait out a database outage.

    Reading trials, storing intermediate values, attributes and parameters, and the final state
    are retried with backoff (up to ``MAX_OUTAGE_BACKOFF_S`` between tries) while the database is
    unavailable (:func:`service.core.errors.database_unavailable`), for at most ``outage_wait_s``.
    Each is idempotent: the writes are upserts, and a final state that an earlier try stored
    (its answer lost with the connection) counts as stored. So a trial in flight when the
    database stops finishes and is told once it is back, instead of failing and waiting to be
    reaped. Creating a trial is not retried here (a try whose answer was lost may have made
    one); the worker gives its slot back and asks again later. Heartbeats are not retried
    either: the next beat is the retry.
    """

    outage_wait_s: float = 120.0

    def _patiently(self, call: Callable[[], T]) -> T:
        deadline: float | None = None
        delay = 0.25
        while True:
            try:
                return call()
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.outage_wait_s
                    log.warning("database unavailable; retrying for up to %.0f s: %s",
                                self.outage_wait_s, database_error_text(exc))
                if now >= deadline:
                    raise
                time.sleep(min(delay, deadline - now))
                delay = min(2 * delay, MAX_OUTAGE_BACKOFF_S)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._patiently(lambda: super(PatientStorage, self).get_trial(trial_id))

    def _get_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return self._patiently(lambda: super(PatientStorage, self)._get_trials(*args, **kwargs))

    def _set_trial_param(self, *args: Any, **kwargs: Any) -> None:
        self._patiently(lambda: super(PatientStorage, self)._set_trial_param(*args, **kwargs))

    def set_trial_intermediate_value(self, trial_id: int, step: int,
                                     intermediate_value: float) -> None:
        self._patiently(lambda: super(PatientStorage, self).set_trial_intermediate_value(
            trial_id, step, intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._patiently(lambda: super(PatientStorage, self).set_trial_user_attr(
            trial_id, key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._patiently(lambda: super(PatientStorage, self).set_trial_system_attr(
            trial_id, key, value))

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Any = None) -> bool:
        tries = 0

        def store() -> bool:
            nonlocal tries
            tries += 1
            try:
                return super(PatientStorage, self).set_trial_state_values(trial_id, state, values)
            except UpdateFinishedTrialError:
                if tries > 1 and super(PatientStorage, self).get_trial(trial_id).state == state:
                    return True  # an earlier try was stored; its answer was lost
                raise

        return self._patiently(store)


def _serialize_sqlite_transactions(engine: Engine, busy_timeout_s: float) -> None:
    """Make Optuna's read-then-write steps atomic on SQLite.

    Optuna pops a WAITING trial with ``SELECT ... FOR UPDATE`` then ``UPDATE``; SQLite ignores
    FOR UPDATE and Python's driver only opens a transaction at the first write, so two workers
    could pop the same enqueued trial (measured: 3-26 duplicates in 80 asks). ``BEGIN
    IMMEDIATE`` takes the write lock when the transaction starts (SQLAlchemy's recipe for
    pysqlite). ``synchronous=NORMAL`` under WAL drops a disk sync per commit (~28 per trial).
    """
    engine.dispose()  # connections made while Optuna created its tables lack the listeners
    busy_ms = max(1, round(busy_timeout_s * 1000))

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


_storage_lock = threading.Lock()




def storage_for_app(app: FastAPI) -> optuna.storages.RDBStorage:
    state = app.state
    storage = getattr(state, "optuna_storage", None)
    if storage is None:
        with _storage_lock:
            storage = getattr(state, "optuna_storage", None)
            if storage is None:
                storage = state.optuna_storage = open_optuna_storage(
                    state.settings.database_url,
                    sqlite_busy_timeout_s=state.settings.sqlite_busy_timeout_s)
    assert isinstance(storage, optuna.storages.RDBStorage)
    return storage




def ask(study: optuna.Study) -> optuna.Trial:
    """``study.ask()`` without Optuna's warning that heartbeats belong to ``Study.optimize``:
    workers record heartbeats themselves, and client trials are kept alive by leases."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        return study.ask()
