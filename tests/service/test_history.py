"""The service's history (SQLite and PostgreSQL): completed jobs write their outcome, and
recommendations and new jobs of the same namespace learn from it; other namespaces, failed and
cancelled jobs, and requests with ``use_history: false`` do not."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.app import create_app
from service.core.db import create_engine_for, downgrade, make_sessionmaker, upgrade
from service.core.models import HistoryEntry, Job, Result, new_id, utcnow
from service.jobs.history import HistoryPools, import_outcomes, read_outcomes
from tests.service.conftest import settings_for
from tuner.evidence.history import JobOutcome, OptimizerResult
from tuner.task import TaskDescription

TASK = {"model_family": "mlp", "num_parameters": 20_000, "dataset_size": 1_500,
        "batch_size": 64}


def outcome(job_id: str, namespace: str = "default", winner: str = "lion",
            task: dict[str, Any] | None = None) -> JobOutcome:
    return JobOutcome(
        job_id=job_id, task=TaskDescription.model_validate(task or TASK), metric="val_loss",
        direction="minimize", trials_used=12, namespace=namespace,
        per_optimizer=(OptimizerResult(winner, 6, 0.10, {"lr": 3e-4}),
                       OptimizerResult("sgd", 6, 0.50, {"lr": 0.1})))


@pytest.fixture
def api(migrated_url: str) -> Iterator[TestClient]:
    app = create_app(settings_for(migrated_url, lease_s=30, reap_interval_s=3600))
    with TestClient(app) as client:
        yield client


def _sessions(client: TestClient) -> sessionmaker[Session]:
    app: FastAPI = client.app  # type: ignore[assignment]
    factory: sessionmaker[Session] = app.state.sessionmaker
    return factory


def _import(client: TestClient, *outcomes: JobOutcome) -> None:
    with _sessions(client)() as session:
        import_outcomes(session, outcomes)


def _recommend(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/recommendations", json={"task": TASK, "top_k": 13, **body})
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _job_evidence(answer: dict[str, Any]) -> set[str]:
    return {e["job_id"] for c in answer["candidates"] for e in c["evidence"]
            if e["source"] == "job"}


def _run_ask_tell_job(client: TestClient, n_trials: int, **body: Any) -> str:
    job_id: str = client.post("/v1/jobs", json={"workload": None, "task": TASK,
                                                "n_trials": n_trials, **body}).json()["id"]
    for i in range(n_trials):
        number = client.post(f"/v1/jobs/{job_id}/trials", json={"client_id": "c"}).json()[
            "number"]
        answer = client.post(f"/v1/jobs/{job_id}/trials/{number}/result",
                             json={"value": 1.0 / (1 + i)})
        assert answer.status_code == 200, answer.text
    return job_id


def test_a_completed_job_writes_its_outcome_and_a_cancelled_one_does_not(
        api: TestClient) -> None:
    done = _run_ask_tell_job(api, 6, namespace="team-a")
    cancelled = api.post("/v1/jobs", json={"workload": None, "task": TASK,
                                           "n_trials": 3}).json()["id"]
    assert api.post(f"/v1/jobs/{cancelled}/cancel").status_code == 200
    with _sessions(api)() as session:
        rows = session.scalars(sa.select(HistoryEntry)).all()
        (history,) = read_outcomes(session, "team-a")
    assert [r.job_id for r in rows] == [done]
    assert rows[0].origin == "local" and rows[0].namespace == "team-a"
    assert history.job_id == done and history.completed == 6 and history.counts
    assert history.task == TaskDescription.model_validate(TASK)


def test_recommendations_learn_from_their_namespace_only(api: TestClient) -> None:
    assert _job_evidence(_recommend(api)) == set()
    _import(api, outcome("past-a", "team-a"), outcome("past-b", "team-b"))
    team_a = _recommend(api, namespace="team-a")
    assert _job_evidence(team_a) == {"past-a"}
    assert team_a["namespace"] == "team-a" and team_a["use_history"] is True
    assert team_a["candidates"][0]["optimizer"] == "lion"
    assert _job_evidence(_recommend(api, namespace="team-a", use_history=False)) == set()
    assert _job_evidence(_recommend(api)) == set()  # the default namespace has no history
    _import(api, outcome("past-a2", "team-a"))  # read on the next request
    assert _job_evidence(_recommend(api, namespace="team-a")) == {"past-a", "past-a2"}


def test_a_new_job_tries_the_nearest_past_winner_first(api: TestClient) -> None:
    _import(api, outcome("past", "team-a"))
    job = api.post("/v1/jobs", json={"workload": None, "task": TASK, "n_trials": 10,
                                     "namespace": "team-a"}).json()
    assert job["namespace"] == "team-a" and job["use_history"] is True
    first = api.post(f"/v1/jobs/{job['id']}/trials", json={"client_id": "c"}).json()
    assert first["optimizer"] == "lion"
    trials = api.get(f"/v1/jobs/{job['id']}/trials").json()
    assert trials[0]["source"] == "history:past"
    # the rules' top default, then the past winner's lr ladder (x3, /3), then the rules
    assert [t["source"] for t in trials[1:4]] == ["rules", "history:past", "history:past"]
    assert {t["source"] for t in trials[4:]} == {"rules"}
    assert api.post(f"/v1/jobs/{job['id']}/trials/{first['number']}/result",
                    json={"value": 0.01}).status_code == 200
    assert api.get(f"/v1/jobs/{job['id']}").json()["best"]["source"] == "history:past"
    report = api.get(f"/v1/jobs/{job['id']}/report").text
    assert "job past (trial 0, 2, 3)" in report and "<td>history:past</td>" in report
    without = api.post("/v1/jobs", json={"workload": None, "task": TASK, "n_trials": 10,
                                         "namespace": "team-a", "use_history": False}).json()
    sources = {t["source"] for t in api.get(f"/v1/jobs/{without['id']}/trials").json()}
    assert sources == {"rules"}


@pytest.mark.parametrize("namespace", ["", "Team", "-a", "a" * 65, "a b", 7, None])
def test_a_bad_namespace_is_a_422_naming_the_field(api: TestClient, namespace: Any) -> None:
    for path, body in (("/v1/recommendations", {"task": TASK}),
                       ("/v1/jobs", {"workload": None, "task": TASK, "n_trials": 2})):
        response = api.post(path, json={**body, "namespace": namespace})
        assert response.status_code == 422, response.text
        assert "namespace" in response.text
    with _sessions(api)() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0


def test_an_import_is_idempotent_and_all_or_nothing(api: TestClient) -> None:
    with _sessions(api)() as session:
        first = import_outcomes(session, [outcome("a"), outcome("b")])
        again = import_outcomes(session, [outcome("a"), outcome("c")])
        with pytest.raises(ValueError, match="appears twice"):
            import_outcomes(session, [outcome("d"), outcome("d")])
        ids = sorted(session.scalars(sa.select(HistoryEntry.job_id)))
    assert (first.added, first.skipped, again.added, again.skipped) == (2, 0, 1, 1)
    assert ids == ["a", "b", "c"]


def test_history_is_read_while_jobs_complete(migrated_url: str) -> None:
    engine = create_engine_for(migrated_url)
    sessions = make_sessionmaker(engine)
    pools = HistoryPools()
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for i in range(30):
                with sessions() as session:
                    import_outcomes(session, [outcome(f"job-{i}")])
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    seen: list[int] = []

    def read() -> None:
        try:
            while not done.is_set():
                with sessions() as session:
                    seen.append(len(pools.outcomes(session, "default")))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert seen == sorted(seen), "the history never shrinks"
        with sessions() as session:
            assert len(pools.outcomes(session, "default")) == 30
    finally:
        engine.dispose()


def test_the_migration_copies_completed_jobs_into_the_history(database_url: str) -> None:
    upgrade(database_url, "0002")
    engine = create_engine_for(database_url)
    job_id = new_id()
    try:
        # the tables as revision 0002 has them (the models have the new columns)
        jobs = sa.table("jobs", *(sa.column(c) for c in (
            "id", "status", "workload", "n_trials", "pruner", "study_name", "trials_claimed",
            "max_retries", "created_at", "updated_at", "finished_at")),
            sa.column("task", sa.JSON))
        with engine.begin() as connection:
            connection.execute(sa.insert(jobs).values(
                id=job_id, status="completed", workload=None, task=TASK, n_trials=6,
                pruner="median", study_name=f"s-{job_id}", trials_claimed=6, max_retries=2,
                created_at=utcnow(), updated_at=utcnow(), finished_at=utcnow()))
            results = Result.__table__
            assert isinstance(results, sa.Table)
            connection.execute(sa.insert(results).values(
                id=new_id(), job_id=job_id, workload=None, model_family="mlp",
                task_type="classification", num_parameters=20_000, task=TASK, metric="value",
                direction="minimize", best_value=0.1, best_optimizer="adamw",
                best_hyperparameters={"lr": 1e-3}, trials_used=6, prior_top="adamw",
                per_optimizer={"adamw": {"trials": 6, "completed": 6, "pruned": 0, "failed": 0,
                                         "best_value": 0.1,
                                         "best_hyperparameters": {"lr": 1e-3}}},
                created_at=utcnow()))
        upgrade(database_url)
        with make_sessionmaker(engine)() as session:
            (copied,) = read_outcomes(session)
        assert copied.job_id == job_id and copied.counts
        assert copied.per_optimizer[0].best_hyperparameters == {"lr": 1e-3}
        downgrade(database_url, "0002")  # and back down: the history goes, the jobs stay
        with engine.connect() as connection:
            assert connection.scalar(sa.select(sa.func.count()).select_from(
                sa.table("jobs"))) == 1
    finally:
        engine.dispose()


def test_the_cli_recommends_with_a_databases_history(
        migrated_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    engine = create_engine_for(migrated_url)
    try:
        with make_sessionmaker(engine)() as session:
            import_outcomes(session, [outcome("past", "team-a")])
    finally:
        engine.dispose()
    flags = ["recommend", "--family", "mlp", "--params", "2e4", "--dataset-size", "1500",
             "--batch-size", "64", "--json"]
    assert main([*flags, "--db", migrated_url, "--namespace", "team-a"]) == 0
    learned = json.loads(capsys.readouterr().out)
    assert _job_evidence(learned) == {"past"}
    assert main([*flags, "--db", migrated_url]) == 0  # the default namespace: nothing to learn
    assert _job_evidence(json.loads(capsys.readouterr().out)) == set()
    assert main([*flags, "--namespace", "team-a"]) == 2
    assert "--namespace goes with --db" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*flags, "--db", migrated_url, "--namespace", "Team A"])
    assert exit_.value.code == 2 and "namespace 'Team A'" in capsys.readouterr().err


def test_the_client_sends_the_history_fields_only_when_asked() -> None:
    import httpx

    from service.client import OptpilotClient

    sent: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json={"id": "x"})

    with OptpilotClient("http://optpilot.test", transport=httpx.MockTransport(answer)) as client:
        client.recommend(TASK)
        client.recommend(TASK, namespace="team-a", use_history=False)
        client.create_job(n_trials=2, task=TASK, namespace="team-a")
    assert "namespace" not in sent[0] and "use_history" not in sent[0]
    assert sent[1]["namespace"] == "team-a" and sent[1]["use_history"] is False
    assert sent[2]["namespace"] == "team-a" and "use_history" not in sent[2]


def test_the_pools_keep_only_namespaces_with_a_history_and_at_most_their_capacity(
        migrated_url: str) -> None:
    engine = create_engine_for(migrated_url)
    pools = HistoryPools(capacity=2)
    try:
        with make_sessionmaker(engine)() as session:
            for name in ("a", "b", "c"):
                import_outcomes(session, [outcome(f"job-{name}", name)])
            for name in ("nobody", "a", "b", "c", "x1", "x2"):
                pools.pool(session, name)
            assert list(pools._cached) == ["b", "c"]
            assert [o.job_id for o in pools.outcomes(session, "a")] == ["job-a"]
            assert pools.outcomes(session, "nobody") == []
    finally:
        engine.dispose()
