"""``optpilot serve`` supervises its workers: the schema is made once before they start, a dead
worker is replaced, and SIGTERM stops them (no orphan) without losing the trial they run. Real
processes on SQLite and PostgreSQL; the worker's own start-up retry in process."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.pool import NullPool

from service.app import create_app
from service.runners.supervisor import Supervisor
from service.runners.worker import REASON_HANDED_BACK, Worker, WorkerConfig
from tests.service.conftest import settings_for
from tests.service.processes import free_port, optpilot, wait_for

pytestmark = pytest.mark.slow


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[1])  # a zombie has exited


def worker_pids(parent: int) -> set[int]:
    """Live worker processes started by ``parent`` (multiprocessing's spawned children)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline and _ppid(int(entry.name)) == parent:
            pids.add(int(entry.name))
    return pids


def alive(pid: int) -> bool:
    return _ppid(pid) is not None


@contextmanager
def serve(db_url: str, log: Path, *flags: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    process = optpilot("serve", "--port", str(port), "--db", db_url, "--poll-interval", "0.2",
                       *flags, log=log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(base) or process.poll() is not None, 90, f"serve (log {log})")
        assert process.poll() is None, log.read_text()
        yield process, base
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def stop_serve(process: subprocess.Popen[bytes], workers: set[int]) -> None:
    """SIGTERM to the serve process alone (not its group): it must stop its workers itself."""
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(90) == 0
    wait_for(lambda: not any(alive(pid) for pid in workers), 30,
             f"workers {sorted(workers)} to exit with their supervisor (orphaned?)")


def job_view(db_url: str, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with TestClient(create_app(settings_for(db_url))) as client:
        return (client.get(f"/v1/jobs/{job_id}").json(),
                client.get(f"/v1/jobs/{job_id}/trials").json())


def early_running_trial(trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A running trial with most of its training ahead (diabetes-mlp: 40 epochs; a worker's
    first trial takes seconds more), so a signal sent now arrives while it runs."""
    return next((t for t in trials if t["state"] == "running" and t["hyperparameters"]
                 and len(t["intermediate_values"]) < 20), None)


def polling(log: Path) -> int:
    return log.read_text().count(": polling ")


def test_serve_supervises_its_workers(database_url: str, tmp_path: Path) -> None:
    """On a fresh database: two workers start (the schema is made before them), a killed one is
    replaced, and SIGTERM to serve alone stops them all, handing back the trials they run
    (``--stop-timeout 0``), which run again later."""
    log = tmp_path / "serve.log"
    with serve(database_url, log, "--workers", "2", "--stop-timeout", "0") as (process, base):
        wait_for(lambda: polling(log) == 2, 120, f"two polling workers (log {log})")
        workers = worker_pids(process.pid)
        assert len(workers) == 2, "a worker died at start"
        if database_url.startswith("sqlite"):  # the restart does not depend on the database
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: polling(log) == 3, 120, "a replacement worker")
            assert "died (signal SIGKILL); starting another" in log.read_text()
            workers = worker_pids(process.pid)
            assert len(workers) == 2 and victim not in workers

        job_id = httpx.post(f"{base}/v1/jobs", timeout=30, json={
            "workload": "diabetes-mlp", "n_trials": 3, "seed": 1}).json()["id"]
        wait_for(lambda: early_running_trial(
            httpx.get(f"{base}/v1/jobs/{job_id}/trials", timeout=10).json()), 90,
            "a trial starting")
        stop_serve(process, workers)
    text = log.read_text()
    assert "Traceback" not in text and "already exists" not in text

    job, trials = job_view(database_url, job_id)
    progress = job["progress"]
    assert job["status"] == "running" and progress["running"] == 0, trials
    handed_back = [t for t in trials if t["state"] == "fail"]
    assert handed_back and progress["retried"] == len(handed_back), trials
    for trial in handed_back:  # failed at its next report, and enqueued again at once
        assert trial["reason"] == REASON_HANDED_BACK and trial["retried"]
        retry = next(t for t in trials if t["retry_of"] == trial["number"])
        assert retry["state"] == "waiting"
        assert retry["hyperparameters"] == trial["hyperparameters"]

    # The rest of the budget, handed-back trials first, runs to exactly n_trials.
    left = job["n_trials"] - progress["finished"]
    assert Worker(WorkerConfig(database_url, poll_interval_s=0.05, max_trials=left)).run() == left
    job, trials = job_view(database_url, job_id)
    assert job["status"] == "completed" and job["progress"]["finished"] == 3
    assert all(t["state"] != "waiting" for t in trials)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_stopping_lets_the_running_trial_finish_within_the_stop_timeout(
        migrated_url: str) -> None:
    app = create_app(settings_for(migrated_url))
    supervisor = Supervisor(WorkerConfig(migrated_url, poll_interval_s=0.2), ["cpu"],
                            stop_timeout_s=120)
    with TestClient(app) as client:
        job_id = client.post("/v1/jobs", json={"workload": "diabetes-mlp", "n_trials": 1,
                                               "seed": 1, "pruner": "none"}).json()["id"]
        supervisor.start()
        try:
            wait_for(lambda: early_running_trial(client.get(f"/v1/jobs/{job_id}/trials").json()),
                     120, "a trial starting")
            workers = set(supervisor.pids())
        finally:
            supervisor.stop()
        assert workers and not any(alive(pid) for pid in workers)
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "completed", job
    assert job["progress"]["completed"] == 1 and job["progress"]["retried"] == 0


def test_db_upgrade_creates_optunas_tables_too(database_url: str, tmp_path: Path) -> None:
    from service.cli import main

    assert main(["db", "upgrade", "--db", database_url]) == 0
    engine = sa.create_engine(database_url, poolclass=NullPool)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"jobs", "optpilot_alembic_version", "studies", "trials", "alembic_version"} <= tables


@contextmanager
def _unopenable(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A URL the worker cannot open yet, and a function that makes it openable: on SQLite a
    directory where the file should be, on PostgreSQL a database not created yet."""
    if database_url.startswith("sqlite"):
        path = tmp_path / "later.db"
        path.mkdir()
        yield f"sqlite:///{path}", path.rmdir
        return
    name = f"optpilot_test_later_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)

    def create() -> None:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))

    try:
        yield sa.make_url(database_url).set(database=name, query={}).render_as_string(
            hide_password=False), create
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_worker_waits_for_a_database_it_cannot_open_yet(
        database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="service.runners.worker")
    with _unopenable(database_url, tmp_path) as (url, make_openable):
        made: list[Worker] = []
        thread = threading.Thread(target=lambda: made.append(Worker(WorkerConfig(url))))
        thread.start()
        wait_for(lambda: "cannot open the Optuna storage" in caplog.text, 30, "a failed open")
        assert thread.is_alive() and not made
        make_openable()
        thread.join(60)
        assert made, "the worker gave up"
        worker = made[0]
        try:
            assert worker.storage.get_all_studies() == []
        finally:
            worker.storage.engine.dispose()
            worker.engine.dispose()


def test_a_stopped_worker_stops_waiting_for_its_database(tmp_path: Path) -> None:
    from service.runners.worker import StoppedWhileStarting

    (tmp_path / "dir.db").mkdir()
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    started = time.monotonic()
    with pytest.raises(StoppedWhileStarting):
        Worker(WorkerConfig(f"sqlite:///{tmp_path / 'dir.db'}"), stop)
    assert time.monotonic() - started < 10
