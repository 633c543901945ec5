"""Client-evaluated trials end to end: a real API process (short leases) on SQLite and
PostgreSQL, driven by ``service.client`` from threads and from a process that gets killed."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.client import Conflict, OptpilotClient
from tests.service.processes import ROOT, Api, wait_for

pytestmark = pytest.mark.slow

# Short enough to watch leases expire, long enough that a loaded 2-core CI machine stalling the
# API for a second or two does not expire a lease that heartbeats keep alive (seen at 2 s).
LEASE_S = 5.0
API_ENV = {"OPTPILOT_LEASE_S": str(LEASE_S), "OPTPILOT_REAP_INTERVAL_S": "0.5"}
TASK = {"model_family": "mlp", "num_parameters": 20_000}


@pytest.fixture
def api(migrated_url: str, tmp_path: Path) -> Iterator[Api]:
    server = Api(migrated_url, tmp_path / "api.log", env=API_ENV)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def objective(hyperparameters: dict[str, float]) -> float:
    """A stand-in for training: best at lr = 1e-3."""
    return abs(math.log10(hyperparameters["lr"]) + 3.0)


def launch(client: OptpilotClient, n_trials: int, **kwargs: Any) -> str:
    job_id: str = client.create_job(n_trials=n_trials, task=TASK, seed=0, **kwargs)["id"]
    return job_id


def test_two_clients_share_one_job_and_finish_its_exact_budget(api: Api) -> None:
    with OptpilotClient(api.base) as client:
        job_id = launch(client, 10)
    evaluated: list[tuple[str, int]] = []
    errors: list[BaseException] = []

    def work(client_id: str) -> None:
        try:
            with OptpilotClient(api.base) as own:
                for trial in own.trials(job_id, client_id=client_id, poll_s=0.2):
                    with trial:
                        evaluated.append((client_id, trial.number))
                        time.sleep(0.2)  # "training", long enough to interleave
                        trial.report(0, objective(trial.hyperparameters))
                        trial.complete(objective(trial.hyperparameters))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in threads)

    with OptpilotClient(api.base) as client:
        job = client.get_job(job_id)
        trials = client.job_trials(job_id)
    numbers = [n for _, n in evaluated]
    assert job["status"] == "completed", job
    assert job["progress"]["finished"] == job["progress"]["completed"] == 10
    assert job["progress"]["retried"] == 0 and job["progress"]["failed"] == 0
    assert sorted(numbers) == list(range(10)), "each trial evaluated once, none lost"
    assert [t["state"] for t in trials] == ["complete"] * 10
    assert {name for name, _ in evaluated} == {"alice", "bob"}, "both clients got trials"


VICTIM = """
import sys, time
from service.client import OptpilotClient
client = OptpilotClient(sys.argv[1])
for trial in client.trials(sys.argv[2], client_id="victim"):
    print(trial.number, flush=True)
    time.sleep(3600)  # "training" until killed
"""


def test_a_killed_client_loses_its_lease_and_its_trial_is_offered_again(
        api: Api, tmp_path: Path) -> None:
    with OptpilotClient(api.base) as client:
        job_id = launch(client, 3, pruner="none")
        victim = subprocess.Popen([sys.executable, "-c", VICTIM, api.base, job_id], cwd=ROOT,
                                  stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert victim.stdout is not None
            lost_number = int(victim.stdout.readline())
            time.sleep(LEASE_S * 1.5)  # the victim's heartbeats keep its lease alive
            held = client.job_trials(job_id)[lost_number]
            assert held["state"] == "running", held
        finally:
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
        # the API's sweep fails it once the lease runs out, with nobody asking
        wait_for(lambda: client.job_trials(job_id)[lost_number]["state"] == "fail",
                 LEASE_S + 10, "the expired lease to be reaped")

        evaluated = []
        for trial in client.trials(job_id, client_id="survivor", poll_s=0.2):
            evaluated.append(trial.number)
            trial.complete(objective(trial.hyperparameters))
        job = client.get_job(job_id)
        trials = client.job_trials(job_id)

    lost = trials[lost_number]
    assert lost["state"] == "fail" and lost["reason"] == "lease expired" and lost["retried"]
    retry = next(t for t in trials if t["retry_of"] == lost_number)
    assert retry["state"] == "complete" and retry["number"] in evaluated
    assert retry["hyperparameters"] == lost["hyperparameters"]
    assert retry["optimizer"] == lost["optimizer"]
    assert job["status"] == "completed", job
    assert job["progress"]["finished"] == 3 and job["progress"]["retried"] == 1
    assert len(evaluated) == len(set(evaluated)) == 3


def test_results_are_idempotent_and_a_result_after_the_lease_expired_is_409(api: Api) -> None:
    with OptpilotClient(api.base) as client:
        job_id = launch(client, 4)
    base = f"/v1/jobs/{job_id}/trials"
    with api.client() as http:
        def ask(client_id: str) -> httpx.Response:
            return http.post(base, json={"client_id": client_id})

        first = ask("c1")
        assert first.status_code == 201
        number = first.json()["number"]
        again = ask("c1")  # asking again returns the same open trial
        assert again.status_code == 200 and again.json()["number"] == number
        result = f"{base}/{number}/result"
        done = http.post(result, json={"value": 0.5})
        assert done.status_code == 200 and done.json()["state"] == "completed"
        assert http.post(result, json={"value": 0.5}).status_code == 200
        for other in ({"value": 0.7}, {"state": "failed", "reason": "oops"}):
            conflict = http.post(result, json=other)
            assert conflict.status_code == 409
            assert conflict.headers["content-type"] == "application/problem+json"

        failed = ask("c1").json()["number"]
        outcome = {"state": "failed", "reason": "CUDA out of memory"}
        for _ in range(2):
            assert http.post(f"{base}/{failed}/result", json=outcome).status_code == 200

        diverged = ask("c1").json()["number"]
        http.post(f"{base}/{diverged}/reports", json={"step": 0, "value": 3.0})
        outcome = {"state": "failed", "reason": "diverged"}
        assert http.post(f"{base}/{diverged}/result", json=outcome).status_code == 200

        late = ask("c2").json()["number"]  # asked, then silent: no heartbeats
        time.sleep(LEASE_S + 0.5)
        for path, body in ((f"{base}/{late}/result", {"value": 0.1}),
                           (f"{base}/{late}/result", {"value": 0.1}),
                           (f"{base}/{late}/heartbeat", None),
                           (f"{base}/{late}/reports", {"step": 0, "value": 0.1})):
            answer = http.post(path, json=body)
            assert answer.status_code == 409, (path, answer.text)
            assert "expired" in answer.json()["detail"]
        trials = http.get(f"/v1/jobs/{job_id}/trials").json()
    assert [t["state"] for t in trials[:4]] == ["complete", "fail", "pruned", "fail"]
    assert trials[1]["reason"] == "CUDA out of memory"
    # diverged: pruned with nan (null in JSON) after its last report, as the trial runner does
    assert trials[2]["reason"] == "diverged"
    assert trials[2]["intermediate_values"] == {"0": 3.0, "1": None}
    assert trials[3]["reason"] == "lease expired" and trials[3]["retried"]
    assert trials[4]["retry_of"] == late and trials[4]["state"] == "waiting"

    with OptpilotClient(api.base) as client, pytest.raises(Conflict, match="expired"):
        client.finish_trial(job_id, late, value=0.1)


def test_pruning_and_cancelling_tell_running_trials_to_stop(api: Api) -> None:
    with OptpilotClient(api.base) as client:
        job_id = launch(client, 7, pruner="median")
        advice: dict[int, list[bool]] = {}
        for trial in client.trials(job_id, poll_s=0.2):
            bad = trial.number == 5  # after five good trials (the median pruner's startup)
            advice[trial.number] = []
            with trial:
                for step in range(3):
                    prune = trial.report(step, 100.0 if bad else 1.0 - 0.01 * trial.number)
                    advice[trial.number].append(prune)
                    if prune:
                        trial.prune()
                        break
                else:
                    trial.complete(1.0)
        job = client.get_job(job_id)
        trials = client.job_trials(job_id)
    assert advice[5] == [False, True], "step 0 is warm-up; clearly worse at step 1: prune"
    assert all(not any(a) for n, a in advice.items() if n != 5)
    assert trials[5]["state"] == "pruned" and trials[5]["intermediate_values"] == {
        "0": 100.0, "1": 100.0}
    assert job["status"] == "completed"
    assert job["progress"]["pruned"] == 1 and job["progress"]["completed"] == 6

    with OptpilotClient(api.base) as client:  # a cancelled job: every report says stop
        job_id = launch(client, 5)
        stops = []
        for trial in client.trials(job_id):
            stops.append(trial.report(0, 1.0))
            client.cancel_job(job_id)
            stops.append(trial.report(1, 1.0))
            trial.prune("job cancelled")
        assert stops == [False, True]
        assert client.get_job(job_id)["status"] == "cancelled"
        states = [t["state"] for t in client.job_trials(job_id)]
        assert states[0] == "pruned" and "running" not in states  # (warm starts stay waiting)


def test_sixteen_clients_keep_their_leases_and_finish_the_exact_budget(api: Api) -> None:
    """16 threads, each the client's trials() loop, on one job: every heartbeat keeps its lease
    (none is reaped), no client leaves its loop early, and the budget is exact. This is the
    load that lost 15 of 16 clients when every request reloaded every trial of the study."""
    n_clients, n_trials = 16, 48
    with OptpilotClient(api.base) as client:
        job_id = launch(client, n_trials)
    done: dict[str, list[int]] = {}
    lost: list[int] = []
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            with OptpilotClient(api.base) as own:
                for trial in own.trials(job_id, client_id=name, poll_s=0.2):
                    with trial:
                        value = objective(trial.hyperparameters)
                        for step in range(3):
                            trial.report(step, value)
                        trial.complete(value)
                    (lost if trial.lease_lost else done.setdefault(name, [])).append(
                        trial.number)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"c{i}",)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors and not any(t.is_alive() for t in threads), errors[:3]
    with OptpilotClient(api.base) as client:
        job = client.get_job(job_id)
    assert lost == [], "a live client lost its lease"
    assert job["status"] == "completed", job
    assert job["progress"]["completed"] == job["progress"]["finished"] == n_trials
    assert job["progress"]["retried"] == job["progress"]["failed"] == 0
    assert sorted(n for numbers in done.values() for n in numbers) == list(range(n_trials))


STALLS = """
import logging, sys
from service.client import OptpilotClient
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
with OptpilotClient(sys.argv[1]) as client:
    for trial in client.trials(sys.argv[2], client_id="stalls", poll_s=0.2):
        print("got", trial.number, flush=True)
        if trial.number == 0:
            sys.stdin.readline()  # "training" while the test stops this process
        trial.report(0, 1.0)
        trial.complete(1.0)
        print("done", trial.number, trial.lease_lost, flush=True)
print("loop ended", flush=True)
"""


def test_a_client_that_stalled_past_its_lease_goes_on_with_the_next_trial(api: Api) -> None:
    """The whole client process stops (SIGSTOP: no heartbeats either) for longer than the lease;
    the server reaps its trial. Once it runs again, the loop warns that the lease was lost,
    drops that result and asks for the next trial (the reaped one's retry among them)."""
    with OptpilotClient(api.base) as client:
        job_id = launch(client, 3, pruner="none")
        stalls = subprocess.Popen([sys.executable, "-c", STALLS, api.base, job_id], cwd=ROOT,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert stalls.stdin is not None and stalls.stdout is not None
            assert stalls.stdout.readline().split() == ["got", "0"]
            os.killpg(stalls.pid, signal.SIGSTOP)
            wait_for(lambda: client.job_trials(job_id)[0]["state"] == "fail",
                     LEASE_S + 10, "the stalled client's trial to be reaped")
            os.killpg(stalls.pid, signal.SIGCONT)
            stalls.stdin.write("\n")
            stalls.stdin.flush()
            out, err = stalls.communicate(timeout=60)
        finally:
            if stalls.poll() is None:
                os.killpg(stalls.pid, signal.SIGKILL)
                stalls.wait()
        job = client.get_job(job_id)
        trials = client.job_trials(job_id)
    assert stalls.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "done 0 True" and lines[-1] == "loop ended", out
    later = [line.split() for line in lines[1:] if line.startswith("done")]
    assert [flag for _, _, flag in later] == ["False"] * 3, out
    assert "trial 0 of job" in err and "lost its lease" in err
    assert trials[0]["reason"] == "lease expired" and trials[0]["retried"]
    retry = next(t for t in trials if t["retry_of"] == 0)
    assert retry["state"] == "complete" and str(retry["number"]) in [n for _, n, _ in later]
    assert job["status"] == "completed" and job["progress"]["finished"] == 3
