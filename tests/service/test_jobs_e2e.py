"""Jobs end to end: HTTP API process + real worker processes on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.service.processes import services, start_worker, stop_process, wait_for, wait_job

pytestmark = pytest.mark.slow


def counted(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in trials if not t["retried"]]


def assert_exact_budget(client: Any, job: dict[str, Any]) -> list[dict[str, Any]]:
    trials: list[dict[str, Any]] = client.get(f"/v1/jobs/{job['id']}/trials").json()
    mine = counted(trials)
    assert job["status"] == "completed", job
    assert job["progress"]["finished"] == job["n_trials"]
    assert len(mine) == job["n_trials"], [t["state"] for t in trials]
    assert all(t["state"] in ("complete", "pruned", "fail") for t in mine)
    return trials


# Each real-process test costs 20-45 s, so to keep the suite inside its time budget only the
# concurrency test below runs on both databases. The others each run on one: a SIGKILLed worker
# and an API restart on SQLite (the embedded default, where a killed writer leaves a file lock),
# the job flow with results, and cancel, on PostgreSQL. On the other database the same code
# paths are covered by the API, lease and client tests.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_rosenbrock_and_digits_jobs_complete_with_a_stored_result(
        migrated_url: str, tmp_path: Path) -> None:
    with services(migrated_url, tmp_path, workers=1) as (api, _), api.client() as client:
        launched = []
        for workload, n in (("rosenbrock", 6), ("digits-mlp", 4)):
            r = client.post("/v1/jobs", json={"workload": workload, "n_trials": n, "seed": 3})
            assert r.status_code == 202, r.text
            assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
            assert r.json()["status"] == "queued"
            launched.append(r.json()["id"])
        for job_id in launched:
            job = wait_job(client, job_id)
            assert_exact_budget(client, job)
            assert job["best"] is not None and job["best"]["value"] is not None
            assert sum(o["trials"] for o in job["per_optimizer"].values()) == job["n_trials"]
        results = client.get("/v1/results", params={"limit": 10}).json()
        by_job = {r["job_id"]: r for r in results["items"]}
        assert set(launched) <= set(by_job)
        digits = by_job[launched[1]]
        assert digits["workload"] == "digits-mlp" and digits["trials_used"] == 4
        assert digits["best_optimizer"] in digits["per_optimizer"]
        assert digits["prior_top"] == client.get(f"/v1/jobs/{launched[1]}").json()[
            "prior"][0]["optimizer"]


def test_two_jobs_three_workers_exact_budgets(migrated_url: str, tmp_path: Path) -> None:
    with services(migrated_url, tmp_path, workers=3) as (api, _), api.client() as client:
        ids = [client.post("/v1/jobs", json={"workload": "rosenbrock", "n_trials": n,
                                             "seed": n}).json()["id"] for n in (13, 11)]
        for job_id in ids:
            trials = assert_exact_budget(client, wait_job(client, job_id))
            assert not [t for t in trials if t["retried"]], "no trial may be lost or repeated"
            workers = {t["worker"] for t in trials}
            assert all(workers)
        all_workers = {t["worker"] for job_id in ids
                       for t in client.get(f"/v1/jobs/{job_id}/trials").json()}
        assert len(all_workers) >= 2, "the trials should be shared among the workers"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_killed_worker_trial_is_failed_retried_and_the_job_completes(
        migrated_url: str, tmp_path: Path) -> None:
    flags = ("--heartbeat-interval", "1", "--grace-period", "3")
    with services(migrated_url, tmp_path, workers=0) as (api, _), api.client() as client:
        job_id = client.post("/v1/jobs", json={"workload": "digits-cnn", "n_trials": 3,
                                               "seed": 1, "pruner": "none"}).json()["id"]
        victim = start_worker(migrated_url, tmp_path / "victim.log", flags)

        def running_trial() -> dict[str, Any] | None:
            for t in client.get(f"/v1/jobs/{job_id}/trials").json():
                if t["state"] == "running" and t["worker"] and t["hyperparameters"]:
                    return dict(t)
            return None

        trial = wait_for(running_trial, 60, "a running trial")
        assert trial["worker"].endswith(f":{victim.pid}")
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        survivor = start_worker(migrated_url, tmp_path / "survivor.log", flags)
        try:
            job = wait_job(client, job_id, timeout_s=120)
        finally:
            stop_process(survivor)
        trials = assert_exact_budget(client, job)
        lost = next(t for t in trials if t["number"] == trial["number"])
        assert lost["state"] == "fail" and lost["retried"]
        assert lost["reason"] == "worker lost (no heartbeat)"
        retry = next(t for t in trials if t["retry_of"] == trial["number"])
        assert retry["state"] in ("complete", "pruned")
        assert retry["hyperparameters"] == lost["hyperparameters"]
        assert job["progress"]["retried"] == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_restarting_the_api_mid_job_does_not_disturb_it(
        migrated_url: str, tmp_path: Path) -> None:
    with services(migrated_url, tmp_path, workers=1) as (api, _):
        with api.client() as client:
            job_id = client.post("/v1/jobs", json={"workload": "digits-mlp", "n_trials": 5,
                                                   "seed": 2}).json()["id"]
            wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["progress"]["finished"]
                     >= 1, 60, "a first finished trial")
        api.stop()
        time.sleep(1.0)  # the worker goes on alone
        api.start()
        with api.client() as client:
            assert_exact_budget(client, wait_job(client, job_id))


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_cancel_stops_new_trials(migrated_url: str, tmp_path: Path) -> None:
    with services(migrated_url, tmp_path, workers=1) as (api, _), api.client() as client:
        job_id = client.post("/v1/jobs", json={"workload": "digits-mlp", "n_trials": 200,
                                               "seed": 0}).json()["id"]
        wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["progress"]["finished"] >= 1,
                 60, "a first finished trial")
        r = client.post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        time.sleep(3)
        before = len(client.get(f"/v1/jobs/{job_id}/trials").json())
        time.sleep(2)
        trials = client.get(f"/v1/jobs/{job_id}/trials").json()
        assert len(trials) == before < 200
        assert not [t for t in trials if t["state"] == "running"]
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200  # idempotent
        assert client.get("/v1/results").json()["total"] == 0
