"""Tiny tuning jobs run to completion in the test process (API via a TestClient, trials by an
in-process :class:`service.runners.worker.Worker` on the same database)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from fastapi.testclient import TestClient

from service.runners.worker import Worker, WorkerConfig
from tuner.workloads.builtin import Rosenbrock

# Both complete on rosenbrock at their defaults (SGD there diverges: fine, but it makes plots
# of tiny jobs empty).
OPTIMIZERS = ["adam", "adamw"]


@contextmanager
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def launch(client: TestClient, n_trials: int = 6, **body: Any) -> str:
    payload = {"workload": "rosenbrock", "n_trials": n_trials, "seed": 0,
               "optimizers": OPTIMIZERS, **body}
    response = client.post("/v1/jobs", json=payload)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


@contextmanager
def short_rosenbrock(epochs: int = 5) -> Iterator[None]:
    """Rosenbrock trials of ``epochs`` epochs (default 20) while in the block: same code path,
    a quarter of the time."""
    before = Rosenbrock.default_epochs
    Rosenbrock.default_epochs = epochs
    try:
        yield
    finally:
        Rosenbrock.default_epochs = before


def work(database_url: str, n_trials: int) -> int:
    """Run ``n_trials`` (short) trials of the active jobs in this process."""
    with one_thread(), short_rosenbrock():
        return Worker(WorkerConfig(database_url=database_url, max_trials=n_trials,
                                   poll_interval_s=0.02)).run()


def finished_job(client: TestClient, database_url: str, n_trials: int = 6,
                 **body: Any) -> dict[str, Any]:
    """Launch a rosenbrock job, run all its trials, return the finished job's JSON."""
    job_id = launch(client, n_trials, **body)
    work(database_url, n_trials)
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "completed", job
    return job


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free local port from a thread; yields its base URL."""
    import threading
    import time

    import uvicorn

    from tests.service.processes import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True, name="test-uvicorn")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
