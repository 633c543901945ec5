"""The jobs API in-process (no workers): launching, validation, listing, cancelling, auth."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.core.models import Job
from tests.service.conftest import settings_for


@pytest.fixture
def count_jobs(sessions: sessionmaker[Session], migrated_url: str) -> Callable[[], tuple[int, int]]:
    """(job rows, Optuna studies) in the database."""

    def count() -> tuple[int, int]:
        with sessions() as session:
            rows = session.scalar(sa.select(sa.func.count()).select_from(Job)) or 0
        storage = optuna.storages.RDBStorage(migrated_url)
        try:
            studies = len(storage.get_all_studies())
        finally:
            storage.engine.dispose()
        return rows, studies

    return count


def launch(client: TestClient, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/jobs", json={"workload": "rosenbrock", "n_trials": 10, **body})
    assert r.status_code == 202, r.text
    result: dict[str, Any] = r.json()
    return result


def test_launch_returns_202_location_and_a_queued_job_with_its_prior(client: TestClient) -> None:
    r = client.post("/v1/jobs", json={"workload": "digits-mlp", "n_trials": 12, "seed": 4})
    assert r.status_code == 202
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["n_trials"] == 12 and job["seed"] == 4
    assert job["task"]["model_family"] == "mlp"  # the workload's own task description
    assert job["prior"] and job["prior"][0]["rationale"]
    progress = job["progress"]
    assert 1 <= progress.pop("waiting") <= 6  # the warm start: prior defaults enqueued
    assert progress == {"total": 12, "finished": 0, "completed": 0, "pruned": 0, "failed": 0,
                        "running": 0, "retried": 0, "cancelled": 0}
    assert job["best"] is None
    assert client.get(r.headers["location"]).json()["id"] == job["id"]
    trials = client.get(f"/v1/jobs/{job['id']}/trials").json()
    assert {t["state"] for t in trials} == {"waiting"}
    assert trials[0]["optimizer"] == job["prior"][0]["optimizer"]  # best-ranked first


def test_task_and_optimizers_shape_the_prior(client: TestClient) -> None:
    job = launch(client, optimizers=["lion", "adam"],
                 task={"model_family": "transformer", "num_parameters": 1000})
    assert [c["optimizer"] for c in job["prior"]] == ["adam", "lion"] or \
        {c["optimizer"] for c in job["prior"]} == {"adam", "lion"}
    assert job["task"]["model_family"] == "transformer"


BAD_BODIES: list[tuple[Any, str]] = [
    ({"workload": "nope", "n_trials": 5}, "body.workload"),
    ({"workload": "rosenbrock", "n_trials": 5, "optimizers": ["adam", "adamx"]},
     "body.optimizers.1"),
    ({"workload": "rosenbrock", "n_trials": 5, "optimizers": ["adam", "adam"]},
     "body.optimizers"),
    ({"workload": "rosenbrock", "n_trials": 5, "optimizers": []}, "body.optimizers"),
    ({"workload": "rosenbrock", "n_trials": 0}, "body.n_trials"),
    ({"workload": "rosenbrock", "n_trials": 10**9}, "body.n_trials"),
    ({"workload": "rosenbrock", "n_trials": "ten"}, "body.n_trials"),
    ({"workload": "rosenbrock", "n_trials": 5.5}, "body.n_trials"),
    ({"workload": "rosenbrock", "n_trials": 5, "timeout_s": -1}, "body.timeout_s"),
    ({"workload": "rosenbrock", "n_trials": 5, "seed": -3}, "body.seed"),
    ({"workload": "rosenbrock", "n_trials": 5, "pruner": "sometimes"}, "body.pruner"),
    ({"workload": "rosenbrock", "n_trials": 5, "colour": "red"}, "body.colour"),
    ({"workload": "r" * 65, "n_trials": 5}, "body.workload"),
    ({"workload": "rosen\x00brock", "n_trials": 5}, "body.workload"),
    ({"workload": None, "n_trials": 5}, "body.task"),
    ({"n_trials": 5}, "body.workload"),
    ({"workload": "rosenbrock", "n_trials": 5, "task": {"model_family": "mlp"}},
     "body.task.num_parameters"),
    ({"workload": "rosenbrock", "n_trials": 5,
      "task": {"model_family": "mlp", "num_parameters": 10, "extra": 1}}, "body.task.extra"),
    ([1, 2, 3], "body"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_bad_input_is_422_naming_the_field_and_writes_nothing(
        client: TestClient, count_jobs: Callable[[], tuple[int, int]], body: Any,
        field: str) -> None:
    before = count_jobs()
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    fields = [e["field"] for e in r.json().get("errors", [])]
    assert field in fields or r.json()["detail"].startswith(field), r.json()
    assert count_jobs() == before


@pytest.mark.parametrize("raw", [
    b'{"workload": "rosenbrock", "n_trials": 5, "timeout_s": NaN}',
    b'{"workload": "rosenbrock", "n_trials": 5, "timeout_s": Infinity}',
    b'{"workload": "rosenbrock", "n_trials": 5, "timeout_s": -Infinity}',
    b'{"workload": "rosenbrock", "n_trials": 5, "task": {"model_family": "mlp", '
    b'"num_parameters": 10, "memory_budget_gb": NaN}}',
    b'{"workload": "rosenbrock", "n_trials": ',
    b'\xff\xfe not json',
])
def test_non_json_numbers_and_broken_json_are_422(
        client: TestClient, count_jobs: Callable[[], tuple[int, int]], raw: bytes) -> None:
    before = count_jobs()
    r = client.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "NaN" not in r.text and "Infinity" not in r.text
    assert count_jobs() == before


def test_oversized_body_is_413_and_writes_nothing(
        client: TestClient, count_jobs: Callable[[], tuple[int, int]]) -> None:
    before = count_jobs()
    r = client.post("/v1/jobs", content=b'{"workload": "' + b"x" * 2_000_000 + b'"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert count_jobs() == before


@pytest.mark.parametrize("path", ["/v1/jobs/{id}", "/v1/jobs/{id}/trials"])
def test_unknown_job_is_404(client: TestClient, path: str) -> None:
    r = client.get(path.format(id="0" * 32))
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert client.post("/v1/jobs/" + "0" * 32 + "/cancel").status_code == 404


def test_cancel_is_idempotent_and_conflicts_with_finished_jobs(
        client: TestClient, sessions: sessionmaker[Session]) -> None:
    job = launch(client)
    for _ in range(2):
        r = client.post(f"/v1/jobs/{job['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert r.json()["finished_at"] is not None
    done = launch(client)
    with sessions() as session:
        session.execute(sa.update(Job).where(Job.id == done["id"]).values(status="completed"))
        session.commit()
    r = client.post(f"/v1/jobs/{done['id']}/cancel")
    assert r.status_code == 409
    assert "completed" in r.json()["detail"]


def test_list_filters_and_paginates_newest_first(client: TestClient) -> None:
    ids = [launch(client, n_trials=n)["id"] for n in (3, 4, 5)]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert page["total"] == 3 and [j["id"] for j in page["items"]] == ids[::-1][:2]
    assert client.get("/v1/jobs", params={"limit": 2, "offset": 2}).json()["items"][0]["id"] \
        == ids[0]
    cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    assert client.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
    assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_jobs_require_the_api_key_when_configured(migrated_url: str) -> None:
    app = create_app(settings_for(migrated_url, api_keys=["s3cret"]))
    with TestClient(app) as client:
        body = {"workload": "rosenbrock", "n_trials": 2}
        assert client.post("/v1/jobs", json=body).status_code == 401
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code \
            == 401
        r = client.post("/v1/jobs", json=body, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 202
        assert client.get("/healthz").status_code == 200


def test_a_cancelled_jobs_enqueued_trials_are_cancelled_not_waiting(client: TestClient) -> None:
    job = launch(client, n_trials=20)
    before = client.get(f"/v1/jobs/{job['id']}").json()["progress"]
    assert before["waiting"] > 0 and before["cancelled"] == 0  # the warm start, enqueued
    progress = client.post(f"/v1/jobs/{job['id']}/cancel").json()["progress"]
    assert progress["waiting"] == 0 and progress["cancelled"] == before["waiting"]
    states = {t["state"] for t in client.get(f"/v1/jobs/{job['id']}/trials").json()}
    assert states == {"cancelled"}


def test_derived_values_come_without_float_noise(client: TestClient) -> None:
    """An lr derived by arithmetic reads 0.00012, not 0.00011999999999999999 (stored values
    keep every bit; answers carry 15 significant digits)."""
    floats: list[float] = []

    def collect(node: Any) -> None:
        if isinstance(node, float):
            floats.append(node)
        elif isinstance(node, dict):
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    for family, params, batch in (("transformer", 1_000, 512), ("mlp", 100_000, 4096),
                                  ("cnn", 120_000_000, None), ("rnn", 1_000, None)):
        task = {"model_family": family, "num_parameters": params, "batch_size": batch}
        collect(client.post("/v1/recommendations", json={"task": task, "top_k": 5}).json())
        collect(client.post("/v1/jobs", json={"workload": None, "n_trials": 5,
                                              "task": task}).json())
    assert floats
    assert [f for f in floats if float(f"{f:.15g}") != f] == []
