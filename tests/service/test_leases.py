"""Client-evaluated trials in process (service.jobs.leases through the API, TestClient), on SQLite
and PostgreSQL: what one request costs as a job grows, and the retry policy of trials whose lease
expires. The end-to-end cases with real processes are in test_ask_tell.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from optuna.storages._rdb import models as optuna_models
from sqlalchemy import event

from service.app import create_app
from tests.service.conftest import settings_for

TASK = {"model_family": "mlp", "num_parameters": 20_000}


@contextmanager
def api(url: str, lease_s: float) -> Iterator[TestClient]:
    """The API with ``lease_s`` leases and no background sweep (requests reap what expired)."""
    app = create_app(settings_for(url, lease_s=lease_s, reap_interval_s=3600))
    with TestClient(app) as client:
        yield client


def launch(client: TestClient, n_trials: int, **body: Any) -> str:
    response = client.post("/v1/jobs", json={"workload": None, "task": TASK,
                                             "n_trials": n_trials, "seed": 0, **body})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


class TrialRowsRead:
    """Counts rows of Optuna's ``trials`` table loaded by any session of this process."""

    def __init__(self) -> None:
        self.count = 0

    def __enter__(self) -> TrialRowsRead:
        event.listen(optuna_models.TrialModel, "load", self._loaded)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(optuna_models.TrialModel, "load", self._loaded)

    def _loaded(self, target: Any, context: Any) -> None:
        self.count += 1


def _one_trial(client: TestClient, job_id: str) -> dict[str, int]:
    """Ask, report three times, heartbeat, tell, view the job: trial rows read by each."""
    base = f"/v1/jobs/{job_id}"
    reads: dict[str, int] = {}

    def call(what: str, path: str, body: Any = None, method: str = "POST") -> Any:
        with TrialRowsRead() as rows:
            response = client.request(method, path, json=body)
        assert response.is_success, (path, response.text)
        reads[what] = max(reads.get(what, 0), rows.count)
        return response.json()

    number = call("ask", f"{base}/trials", {"client_id": "c"})["number"]
    for step in range(3):
        call("report", f"{base}/trials/{number}/reports", {"step": step, "value": 1.0 / (1 + step)})
    call("heartbeat", f"{base}/trials/{number}/heartbeat")
    call("result", f"{base}/trials/{number}/result", {"value": 0.25 + 0.001 * number})
    call("job view", base, method="GET")
    return reads


def test_a_request_reads_as_many_trial_rows_late_in_a_job_as_early(migrated_url: str) -> None:
    """Each request rereads only the trials that changed (new or unfinished ones), not the
    whole study: the rows read per request do not grow with the number of finished trials.
    (The sampler and the pruner still look at every trial in memory, as in plain Optuna.)"""
    with api(migrated_url, lease_s=60) as client:
        job_id = launch(client, 30, pruner="median")
        for _ in range(3):
            _one_trial(client, job_id)
        early = _one_trial(client, job_id)
        for _ in range(12):
            _one_trial(client, job_id)
        late = _one_trial(client, job_id)
    assert late["heartbeat"] == 0, "a heartbeat is one UPDATE of the lease row"
    for what, rows in late.items():
        assert rows <= early[what] + 2, (what, early, late)


def test_a_retried_trial_that_loses_its_lease_again_is_retried_up_to_max_retries(
        migrated_url: str) -> None:
    with api(migrated_url, lease_s=0.3) as client:
        job_id = launch(client, 1, max_retries=2, pruner="none")
        base = f"/v1/jobs/{job_id}/trials"
        first = client.post(base, json={"client_id": "a"}).json()
        numbers = [first["number"]]
        for client_id in ("b", "c"):
            time.sleep(0.4)  # no heartbeat: the lease expires; the next ask reaps it
            answer = client.post(base, json={"client_id": client_id})
            assert answer.status_code == 201, f"the lost trial was not offered again: {answer.text}"
            retry = answer.json()
            assert retry["hyperparameters"] == first["hyperparameters"], "the same trial again"
            numbers.append(retry["number"])
        time.sleep(0.4)
        client.post(base, json={"client_id": "d"})  # reaps the second retry
        trials = {t["number"]: t for t in client.get(f"/v1/jobs/{job_id}/trials").json()}
        chain = [trials[n] for n in numbers]
        assert [t["reason"] for t in chain] == ["lease expired"] * 3
        assert [t["retried"] for t in chain] == [True, True, False], \
            "max_retries=2: the first two losses are offered again, the third counts as failed"
        assert [t["retry_of"] for t in chain] == [None, numbers[0], numbers[0]]
        job = client.get(f"/v1/jobs/{job_id}").json()
        progress = job["progress"]
        assert (progress["finished"], progress["failed"], progress["retried"]) == (1, 1, 2)
        assert progress["running"] == progress["waiting"] == 0
        assert job["status"] == "failed", "its one trial failed: the budget is spent"


def test_no_trial_is_handed_out_once_the_jobs_time_is_up(migrated_url: str) -> None:
    with api(migrated_url, lease_s=30) as client:
        job_id = launch(client, 5, timeout_s=0.5)
        base = f"/v1/jobs/{job_id}"
        number = client.post(f"{base}/trials", json={"client_id": "c"}).json()["number"]
        assert client.post(f"{base}/trials/{number}/result",
                           json={"value": 0.5}).status_code == 200
        time.sleep(0.7)
        late = client.post(f"{base}/trials", json={"client_id": "c"})
        assert late.status_code == 409, late.text
        assert "out of time" in late.json()["detail"]
        job = client.get(base).json()
    assert job["status"] == "completed"
    assert job["progress"]["finished"] == 1
    assert job["error"] == "timeout after 1 of 5 trials"


def test_a_diverged_result_is_pruned_in_the_answer_as_in_the_trial(migrated_url: str) -> None:
    with api(migrated_url, lease_s=30) as client:
        job_id = launch(client, 2)
        base = f"/v1/jobs/{job_id}"
        number = client.post(f"{base}/trials", json={"client_id": "c"}).json()["number"]
        outcome = {"state": "failed", "reason": "diverged"}
        answers = [client.post(f"{base}/trials/{number}/result", json=outcome)
                   for _ in range(2)]  # the same outcome twice: harmless
        trial = client.get(f"{base}/trials").json()[0]
    assert [a.status_code for a in answers] == [200, 200]
    assert {a.json()["state"] for a in answers} == {"pruned"}
    assert trial["state"] == "pruned" and trial["reason"] == "diverged"


def test_a_client_trial_without_a_lease_is_void_once_old(
        migrated_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial made by an ask whose answer was lost (no lease was written) is voided by the
    next request that reaps the job; the job still ends with its exact budget."""
    import optuna
    from optuna.trial import TrialState

    from service.core.storage import ask as storage_ask
    from service.core.storage import storage_for_app
    from service.jobs import leases
    from service.jobs.state import study_name_for
    from tuner.contract import is_void

    with api(migrated_url, lease_s=30) as client:
        job_id = launch(client, 2)
        storage = storage_for_app(client.app)  # type: ignore[arg-type]
        study = optuna.load_study(study_name=study_name_for(job_id), storage=storage)
        orphan = storage_ask(study)
        monkeypatch.setattr(leases, "UNLEASED_VOID_AFTER_S", 0.0)
        base = f"/v1/jobs/{job_id}"
        for _ in range(2):
            number = client.post(f"{base}/trials", json={"client_id": "c"}).json()["number"]
            assert client.post(f"{base}/trials/{number}/result",
                               json={"value": 0.5}).status_code == 200
        job = client.get(base).json()
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == orphan.number)
    assert trial.state == TrialState.FAIL and is_void(trial)
    assert job["status"] == "completed" and job["progress"]["finished"] == 2
    assert job["progress"]["running"] == 0
