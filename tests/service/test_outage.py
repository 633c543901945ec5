"""A database outage in the middle of a job: a PostgreSQL server of the test's own is stopped
(``pg_ctl stop -m fast``: every connection dropped, as an operator's restart does) while real
worker processes run a job's trials, then started again. The job must end with its exact
budget: ``n_trials`` trials finished, status completed, no trial left running or waiting.

Ten runs in a row on the same server and the same two workers (they must survive every
outage). The first outage lasts 20 s, as in the report that found jobs completed one trial
short; the other nine last 2 s, which is enough to matter because the workers run with a
1 s grace period: every trial in flight has a stale heartbeat when the database comes back, so
its worker's late result races the reaper of the other worker, in every run. Without server
binaries the test skips, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState
from sqlalchemy.orm import Session, sessionmaker

from service.db import create_engine_for, make_sessionmaker, upgrade
from service.jobs import ACTIVE, counted_trials, create_job
from service.models import Job
from service.storage import open_optuna_storage
from tests.service.pgserver import ThrowawayPostgres, unavailable_reason
from tests.service.processes import start_worker, stop_process

pytestmark = pytest.mark.slow

OUTAGES_S = [20.0] + [2.0] * 9
N_TRIALS = 5
WORKER_FLAGS = ("--heartbeat-interval", "1", "--grace-period", "1", "--poll-interval", "0.2")


@dataclass
class Cluster:
    server: ThrowawayPostgres
    sessions: sessionmaker[Session]
    storage: optuna.storages.RDBStorage
    workers: list[subprocess.Popen[bytes]]
    logs: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"the outage test needs a PostgreSQL server in CI: {reason}",
                        pytrace=False)
        pytest.skip(reason)
    server = ThrowawayPostgres()
    logs = tmp_path_factory.mktemp("outage")
    workers: list[subprocess.Popen[bytes]] = []
    engine = None
    try:
        server.start()
        upgrade(server.url)
        engine = create_engine_for(server.url)
        sessions = make_sessionmaker(engine)
        storage = open_optuna_storage(server.url)
        workers = [start_worker(server.url, logs / f"worker{i}.log", WORKER_FLAGS)
                   for i in range(2)]
        yield Cluster(server, sessions, storage, workers, logs)
    finally:
        for worker in workers:
            stop_process(worker)
        if engine is not None:
            engine.dispose()
        server.remove()


def _job(cluster: Cluster, job_id: str) -> Job | None:
    try:
        with cluster.sessions() as session:
            return session.get(Job, job_id)
    except sa.exc.OperationalError:  # the server is still coming back
        return None


def _finished(cluster: Cluster, job: Job) -> int:
    study = optuna.load_study(study_name=job.study_name, storage=cluster.storage)
    return sum(t.state.is_finished() for t in counted_trials(study.get_trials(deepcopy=False)))


def _wait(what: str, predicate: Callable[[], bool], timeout_s: float, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                      for p in sorted(cluster.logs.glob("*.log")))
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{tails}")


@pytest.mark.parametrize("outage_s", OUTAGES_S,
                         ids=[f"run{i + 1}-{s:g}s" for i, s in enumerate(OUTAGES_S)])
def test_a_database_outage_mid_job_ends_with_the_exact_budget(cluster: Cluster,
                                                              outage_s: float) -> None:
    with cluster.sessions() as session:
        job_id = create_job(session, cluster.storage, workload="rosenbrock", task=None,
                            n_trials=N_TRIALS, optimizer_names=["adam", "adamw"], seed=0,
                            pruner="none").id

    def started() -> bool:
        job = _job(cluster, job_id)
        return job is not None and _finished(cluster, job) >= 1

    _wait("the first trial", started, 120, cluster)
    cluster.server.stop()
    time.sleep(outage_s)
    cluster.server.start()

    def ended() -> bool:
        job = _job(cluster, job_id)
        return job is not None and job.status not in ACTIVE

    _wait("the job to end after the outage", ended, 180, cluster)
    job = _job(cluster, job_id)
    assert job is not None
    trials = optuna.load_study(study_name=job.study_name,
                               storage=cluster.storage).get_trials(deepcopy=False)
    counted = counted_trials(trials)
    states = [t.state for t in trials]
    assert job.status == "completed", (job.status, job.error, states)
    assert sum(t.state.is_finished() for t in counted) == N_TRIALS, states
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, states
    dead = [p.args for p in cluster.workers if p.poll() is not None]
    assert not dead, f"a worker did not survive the outage: {dead}"
