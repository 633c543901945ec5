"""Prometheus metrics at ``/metrics``: request counts by route template, latency, and the
database figures computed at scrape time (jobs, trials, throughput, worker heartbeats)."""

from __future__ import annotations

from datetime import datetime

import optuna
import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.core.storage import ask, storage_for_app
from tests.service.conftest import settings_for
from tests.service.jobrun import launch, work
from tuner import optuna_internals

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_need_the_api_key_when_keys_are_configured(migrated_url: str) -> None:
    with TestClient(create_app(settings_for(migrated_url, api_keys=["k-metrics"]))) as c:
        denied = c.get("/metrics")
        assert denied.status_code == 401
        assert denied.headers["content-type"] == "application/problem+json"
        samples = scrape(c, Authorization="Bearer k-metrics")
        assert value(samples, "optpilot_http_requests_total", method="GET", route="/metrics",
                     status="401") == 1


def test_requests_are_counted_by_route_template_not_raw_path(migrated_url: str) -> None:
    app = create_app(settings_for(migrated_url, max_body_bytes=64))
    ids = ["a1" * 8, "b2" * 8, "c3" * 8]
    with TestClient(app) as c:
        for job_id in ids:
            assert c.get(f"/v1/jobs/{job_id}").status_code == 404
        assert c.get("/no/such/path").status_code == 404
        assert c.post("/v1/jobs", content=b"x" * 500,
                      headers={"content-type": "application/json"}).status_code == 413
        assert c.get("/healthz").status_code == 200
        response = c.get("/metrics")
        samples = scrape(c)
    assert not any(job_id in response.text for job_id in ids), "raw paths must not be labels"
    assert value(samples, "optpilot_http_requests_total", method="GET",
                 route="/v1/jobs/{job_id}", status="404") == 3
    assert value(samples, "optpilot_http_requests_total", method="GET", route="<unmatched>",
                 status="404") == 1
    assert value(samples, "optpilot_http_requests_total", method="POST", route="/v1/jobs",
                 status="413") == 1
    assert value(samples, "optpilot_http_request_duration_seconds_count", method="GET",
                 route="/v1/jobs/{job_id}") == 3
    assert value(samples, "optpilot_http_request_duration_seconds_bucket", method="GET",
                 route="/healthz", le="+Inf") == 1


def test_jobs_trials_throughput_and_heartbeats_from_the_database(migrated_url: str) -> None:
    app = create_app(settings_for(migrated_url))
    with TestClient(app) as c:
        fresh = scrape(c)  # before Optuna's tables exist: zeros, and the database is up
        assert value(fresh, "optpilot_database_up") == 1
        assert value(fresh, "optpilot_jobs", status="queued") == 0
        assert value(fresh, "optpilot_trials", state="complete") == 0

        done = launch(c, n_trials=3)
        work(migrated_url, 3)
        waiting = launch(c, n_trials=2)
        samples = scrape(c)
        assert value(samples, "optpilot_jobs", status="completed") == 1
        assert value(samples, "optpilot_jobs", status="queued") == 1
        assert value(samples, "optpilot_jobs", status="failed") == 0
        finished = sum(value(samples, "optpilot_trials", state=s) or 0
                       for s in ("complete", "pruned", "fail"))
        assert finished == 3
        # the waiting job's enqueued warm-start trials
        assert (value(samples, "optpilot_trials", state="waiting") or 0) >= 1
        completed = value(samples, "optpilot_trials", state="complete") or 0
        rate = value(samples, "optpilot_trials_completed_per_second")
        assert rate == completed / 60
        assert value(samples, "optpilot_worker_live_trials") == 0
        age = value(samples, "optpilot_worker_heartbeat_age_seconds")
        assert age is not None and 0 <= age < 120

        # A worker busy with a trial: its heartbeat makes it live, an old one makes it stale.
        storage = storage_for_app(app)
        job = c.get(f"/v1/jobs/{waiting}").json()
        trial = ask(optuna.load_study(study_name=job["study_name"], storage=storage))
        storage.record_heartbeat(optuna_internals.trial_id(trial))
        busy = scrape(c)
        assert value(busy, "optpilot_worker_live_trials") == 1
        assert value(busy, "optpilot_worker_stale_trials") == 0
        assert value(busy, "optpilot_trials", state="running") == 1
        busy_age = value(busy, "optpilot_worker_heartbeat_age_seconds")
        assert busy_age is not None and busy_age < 30
        with app.state.engine.begin() as conn:
            conn.execute(sa.text("UPDATE trial_heartbeats SET heartbeat = :old")
                         .bindparams(sa.bindparam("old", type_=sa.DateTime)),
                         {"old": datetime(2000, 1, 1)})
        lost = scrape(c)
        assert value(lost, "optpilot_worker_live_trials") == 0
        assert value(lost, "optpilot_worker_stale_trials") == 1
        assert (value(lost, "optpilot_worker_heartbeat_age_seconds") or 0) > 3600
        assert c.get(f"/v1/jobs/{done}").json()["status"] == "completed"
