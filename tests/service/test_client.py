"""The Python client (``service.client``) and the remote CLI commands.

The client's own logic (retries, error parsing, headers, the trial loop's bookkeeping) is tested
against ``httpx.MockTransport``; the CLI's remote commands against a real API process.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.cli import main
from service.client import (
    ClientTrial,
    Conflict,
    ConnectionFailed,
    NotFound,
    OptpilotClient,
    OptpilotError,
    ServiceUnavailable,
    TrialPruned,
    Unauthorized,
    ValidationFailed,
    default_client_id,
)
from tests.service.processes import Api, free_port
from tuner.task import TaskDescription

Handler = Callable[[httpx.Request], httpx.Response]


def problem(status: int, detail: str, **extra: Any) -> httpx.Response:
    titles = {401: "Unauthorized", 404: "Not Found", 409: "Conflict",
              422: "Unprocessable Content", 503: "Service Unavailable"}
    body = {"type": "about:blank", "title": titles.get(status, "Error"), "status": status,
            "detail": detail, **extra}
    headers = {"content-type": "application/problem+json"}
    if status == 503:
        headers["retry-after"] = "1"
    return httpx.Response(status, content=json.dumps(body), headers=headers)


class Recorder:
    """A mock transport's handler that answers from a list and records every request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def make_client(handler: Handler, sleeps: list[float] | None = None,
                **kwargs: Any) -> OptpilotClient:
    record = sleeps if sleeps is not None else []
    return OptpilotClient("http://optpilot.test", transport=httpx.MockTransport(handler),
                          sleep=record.append, **kwargs)


JOB = {"id": "j1", "status": "running", "workload": None,
       "progress": {"running": 0, "waiting": 0}}


# -- retries --------------------------------------------------------------------------------


def test_503_is_retried_honouring_retry_after() -> None:
    busy = httpx.Response(503, headers={"retry-after": "2"}, json={"title": "busy"})
    recorder = Recorder(busy, busy, httpx.Response(200, json=JOB))
    sleeps: list[float] = []
    with make_client(recorder, sleeps) as client:
        assert client.get_job("j1") == JOB
    assert sleeps == [2.0, 2.0] and len(recorder.requests) == 3


def test_503_without_retry_after_backs_off_exponentially_then_raises() -> None:
    recorder = Recorder(httpx.Response(503, json={"title": "Service Unavailable",
                                                  "detail": "the database is busy"}))
    sleeps: list[float] = []
    with make_client(recorder, sleeps, retries=3, backoff_s=0.5) as client, \
            pytest.raises(ServiceUnavailable) as info:
        client.list_jobs()
    assert sleeps == [0.5, 1.0, 2.0] and len(recorder.requests) == 4
    assert info.value.status == 503 and info.value.detail == "the database is busy"


def test_retry_after_as_an_http_date_is_honoured() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    date = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    recorder = Recorder(httpx.Response(503, headers={"retry-after": date}),
                        httpx.Response(200, json=JOB))
    sleeps: list[float] = []
    with make_client(recorder, sleeps) as client:
        client.get_job("j1")
    assert 25 < sleeps[0] <= 30


def test_connection_errors_are_retried_for_safe_requests() -> None:
    recorder = Recorder(httpx.ReadError("reset"), httpx.ReadTimeout("slow"),
                        httpx.Response(200, json={"should_prune": True}))
    with make_client(recorder) as client:
        assert client.report_trial("j1", 3, step=1, value=0.5) is True
    assert len(recorder.requests) == 3


def test_launching_a_job_is_not_repeated_once_it_may_have_arrived() -> None:
    for answer in (httpx.ReadError("reset"), problem(503, "the database is busy")):
        recorder = Recorder(answer, httpx.Response(202, json=JOB))
        with make_client(recorder) as client, pytest.raises(OptpilotError):
            client.create_job("rosenbrock", n_trials=5)
        assert len(recorder.requests) == 1


def test_a_request_that_never_left_is_retried_even_when_launching() -> None:
    recorder = Recorder(httpx.ConnectError("refused"), httpx.Response(202, json=JOB))
    with make_client(recorder) as client:
        assert client.create_job("rosenbrock", n_trials=5)["id"] == "j1"
    assert len(recorder.requests) == 2


def test_unreachable_server_is_connection_failed_after_the_retries() -> None:
    recorder = Recorder(httpx.ConnectError("[Errno 111] Connection refused"))
    sleeps: list[float] = []
    with make_client(recorder, sleeps, retries=2, backoff_s=0.1) as client, \
            pytest.raises(ConnectionFailed) as info:
        client.results()
    assert info.value.status == 0 and "Connection refused" in str(info.value)
    assert sleeps == [0.1, 0.2]


# -- errors, headers, request shapes --------------------------------------------------------


@pytest.mark.parametrize(("status", "kind"), [
    (401, Unauthorized), (404, NotFound), (409, Conflict), (422, ValidationFailed),
    (413, OptpilotError),
])
def test_problem_documents_become_typed_errors(status: int, kind: type[OptpilotError]) -> None:
    errors = [{"loc": ["body", "n_trials"], "field": "body.n_trials", "msg": "too big",
               "type": "less_than_equal"}]
    recorder = Recorder(problem(status, "what went wrong", errors=errors))
    with make_client(recorder) as client, pytest.raises(kind) as info:
        client.create_job("rosenbrock", n_trials=10**9)
    exc = info.value
    assert type(exc) is kind and exc.status == status
    assert exc.detail == "what went wrong" and exc.errors == errors
    assert str(exc).startswith(f"{status} ") and str(exc).endswith(": what went wrong")


def test_an_error_without_a_problem_document_keeps_its_text() -> None:
    recorder = Recorder(httpx.Response(502, text="Bad gateway from the proxy"))
    with make_client(recorder) as client, pytest.raises(OptpilotError) as info:
        client.get_job("j1")
    assert info.value.status == 502 and info.value.title == "Bad Gateway"
    assert info.value.detail == "Bad gateway from the proxy" and info.value.errors == []


def test_the_api_key_is_sent_as_a_bearer_token(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(httpx.Response(200, json={"items": [], "total": 0}))
    monkeypatch.delenv("OPTPILOT_API_KEY", raising=False)
    with make_client(recorder) as client:
        client.optimizers()
    assert "authorization" not in recorder.requests[-1].headers
    with make_client(recorder, api_key="s3cret") as client:
        client.workloads()
    assert recorder.requests[-1].headers["authorization"] == "Bearer s3cret"
    monkeypatch.setenv("OPTPILOT_API_KEY", "from-env")
    with make_client(recorder) as client:
        client.optimizers()
    assert recorder.requests[-1].headers["authorization"] == "Bearer from-env"


def test_request_shapes() -> None:
    recorder = Recorder(httpx.Response(200, json={"items": [], "total": 0}))
    task = TaskDescription(model_family="mlp", num_parameters=1000)
    with make_client(recorder) as client:
        client.create_job(n_trials=4, task=task, optimizers=["adam"], seed=1)
        client.recommend({"model_family": "cnn", "num_parameters": 10}, top_k=2)
        client.results(model_family="mlp", min_parameters=10, limit=5)
        client.get_job("../v1/results")
    launch, recommend, results, odd = recorder.requests
    body = json.loads(launch.content)
    assert body["workload"] is None and body["n_trials"] == 4 and body["seed"] == 1
    assert body["task"]["model_family"] == "mlp" and body["optimizers"] == ["adam"]
    assert "timeout_s" not in body and body["pruner"] == "median"
    assert json.loads(recommend.content) == {
        "task": {"model_family": "cnn", "num_parameters": 10}, "top_k": 2}
    assert dict(results.url.params) == {"model_family": "mlp", "min_parameters": "10",
                                        "limit": "5", "offset": "0"}
    assert odd.url.raw_path == b"/v1/jobs/..%2Fv1%2Fresults"  # ids never escape their path


def test_non_finite_values_are_refused_before_sending() -> None:
    recorder = Recorder(httpx.Response(200, json={}))
    with make_client(recorder) as client:
        for call in (lambda: client.report_trial("j", 0, 0, float("nan")),
                     lambda: client.finish_trial("j", 0, value=float("inf"))):
            with pytest.raises(ValueError, match="finite"):
                call()
    assert recorder.requests == []


def test_default_client_id_is_host_pid_random() -> None:
    host, pid, tag = default_client_id().rsplit(":", 2)
    assert host and pid.isdigit() and len(tag) == 8
    assert default_client_id() != default_client_id()


# -- the trial loop, against a fake server --------------------------------------------------


class FakeJob:
    """Just enough of the ask/tell endpoints: hands out ``n`` trials, records results."""

    def __init__(self, n: int, lease_s: float = 60.0) -> None:
        self.n, self.lease_s = n, lease_s
        self.next = 0
        self.results: dict[int, dict[str, Any]] = {}
        self.heartbeats: list[int] = []
        self.lock = threading.Lock()
        self.status = "running"
        self.expired: set[int] = set()

    def lease(self, number: int) -> dict[str, Any]:
        expires = datetime.now(UTC) + timedelta(seconds=self.lease_s)
        return {"job_id": "j1", "number": number, "client_id": "me", "optimizer": "adam",
                "hyperparameters": {"lr": 0.001}, "state": "open",
                "lease_expires_at": expires.isoformat()}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        with self.lock:
            if request.method == "GET":
                running = self.next - len(self.results) - len(self.expired)
                return httpx.Response(200, json={**JOB, "status": self.status,
                                                 "progress": {"running": running,
                                                              "waiting": 0}})
            if parts[-1] == "trials":
                if self.next >= self.n:
                    return problem(409, "job j1 has no trial left to give")
                self.next += 1
                return httpx.Response(201, json=self.lease(self.next - 1))
            number = int(parts[4])
            if parts[-1] == "heartbeat":
                if number in self.results or number in self.expired:
                    return problem(409, f"trial {number} is already over")
                self.heartbeats.append(number)
                return httpx.Response(200, json={"number": number, "lease_expires_at":
                                                 self.lease(number)["lease_expires_at"]})
            if number in self.expired:
                return problem(409, f"trial {number}: the lease expired; the trial was failed")
            if parts[-1] == "reports":
                return httpx.Response(200, json={"should_prune": json.loads(
                    request.content)["value"] > 10})
            self.results[number] = json.loads(request.content)
            if len(self.results) + len(self.expired) == self.n:
                self.status = "completed"
            return httpx.Response(200, json=self.lease(number))


@pytest.fixture
def fake() -> Iterator[tuple[FakeJob, OptpilotClient]]:
    job = FakeJob(3)
    with make_client(job) as client:
        yield job, client


def test_the_loop_yields_until_no_trial_is_left_and_fails_unreported_ones(
        fake: tuple[FakeJob, OptpilotClient]) -> None:
    job, client = fake
    seen = []
    for trial in client.trials("j1", client_id="me"):
        seen.append(trial.number)
        assert trial.optimizer == "adam" and trial.hyperparameters == {"lr": 0.001}
        if trial.number == 0:
            assert trial.report(0, 1.0) is False
            assert trial.report(1, 20.0) is True
            trial.prune()
        elif trial.number == 1:
            trial.complete(0.25)
            trial.complete(0.25)  # the same result again is harmless
            with pytest.raises(RuntimeError, match="already completed"):
                trial.fail("changed my mind")
        # trial 2: neither completed nor failed
    assert seen == [0, 1, 2]
    assert job.results == {0: {"state": "pruned"}, 1: {"value": 0.25},
                           2: {"state": "failed", "reason": "not reported"}}


def test_breaking_out_of_the_loop_fails_the_open_trial(
        fake: tuple[FakeJob, OptpilotClient]) -> None:
    job, client = fake
    for _trial in client.trials("j1"):
        break
    assert job.results == {0: {"state": "failed", "reason": "not reported"}}


def test_with_trial_fails_it_with_the_exception_and_re_raises(
        fake: tuple[FakeJob, OptpilotClient]) -> None:
    job, client = fake
    loop = client.trials("j1")
    trial = next(loop)

    def train() -> None:
        with trial:
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        train()
    loop.close()
    assert job.results == {0: {"state": "failed", "reason": "ValueError: boom"}}
    assert trial.state == "failed" and trial.reason == "ValueError: boom"


def test_with_trial_prunes_on_trial_pruned_and_goes_on(
        fake: tuple[FakeJob, OptpilotClient]) -> None:
    job, client = fake
    for trial in client.trials("j1"):
        with trial:
            if trial.number == 1:
                raise TrialPruned("worse than the median")
            trial.complete(1.0)
    assert job.results[1] == {"state": "pruned", "reason": "worse than the median"}
    assert job.results[0] == job.results[2] == {"value": 1.0}


def test_heartbeats_keep_the_lease_until_the_trial_is_finished() -> None:
    job = FakeJob(1, lease_s=0.3)
    with make_client(job) as client:
        for trial in client.trials("j1"):
            time.sleep(0.5)
            beats = len(job.heartbeats)
            trial.complete(1.0)
            assert trial._thread is not None and not trial._thread.is_alive()
    assert beats >= 2, "a third of a 0.3 s lease: a heartbeat every ~0.1 s"
    time.sleep(0.25)
    assert len(job.heartbeats) == beats, "no heartbeat after the result"
    assert not trial.lease_lost


def test_a_heartbeat_conflict_marks_the_lease_lost() -> None:
    job = FakeJob(1, lease_s=0.15)
    with make_client(job) as client:
        trial = ClientTrial(client, client.ask_trial("j1", "me"))
        job.expired.add(trial.number)
        deadline = time.monotonic() + 5
        while not trial.lease_lost and time.monotonic() < deadline:
            time.sleep(0.02)
        assert trial.lease_lost
        trial.close()  # nothing to fail: the server already did
    assert job.results == {}


def test_a_lost_lease_is_logged_and_the_loop_goes_on_with_the_next_trial(
        fake: tuple[FakeJob, OptpilotClient], caplog: pytest.LogCaptureFixture) -> None:
    job, client = fake
    outcomes = []
    for trial in client.trials("j1"):
        with trial:
            if trial.number == 1:  # the client stalled past its lease; the server reaped it
                job.expired.add(1)
                assert trial.report(0, 1.0) is True, "stop: the trial is no longer ours"
                assert trial.report(1, 1.0) is True
            trial.complete(1.0)  # dropped for the lost trial, without raising
        outcomes.append((trial.number, trial.state, trial.lease_lost))
    assert outcomes == [(0, "completed", False), (1, "failed", True), (2, "completed", False)]
    assert job.results == {0: {"value": 1.0}, 2: {"value": 1.0}}
    lost = [r for r in caplog.records if "lost its lease" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelname == "WARNING" and "trial 1" in lost[0].getMessage()


def test_a_result_refused_for_a_lost_lease_does_not_end_the_loop(
        fake: tuple[FakeJob, OptpilotClient]) -> None:
    job, client = fake
    seen = []
    for trial in client.trials("j1"):
        seen.append(trial.number)
        if trial.number == 0:
            job.expired.add(0)
        trial.complete(0.5)
        if trial.number == 0:
            assert trial.lease_lost and trial.state == "failed"
            trial.prune()  # harmless too: nothing more is sent for a lost trial
    assert seen == [0, 1, 2]
    assert job.results == {1: {"value": 0.5}, 2: {"value": 0.5}}


def test_closing_the_client_fails_its_open_trial_and_stops_its_heartbeats() -> None:
    job = FakeJob(2, lease_s=0.3)
    client = make_client(job)
    loop = client.trials("j1")
    trial = next(loop)
    time.sleep(0.25)
    assert job.heartbeats, "heartbeats run while the trial is open"
    client.close()  # e.g. the with-block of the client ended while the loop was still open
    assert trial._thread is not None and not trial._thread.is_alive()
    assert job.results == {0: {"state": "failed", "reason": "not reported"}}
    beats = len(job.heartbeats)
    time.sleep(0.3)
    assert len(job.heartbeats) == beats
    loop.close()  # the loop's own clean-up finds nothing left to do


def test_a_heartbeat_in_flight_when_its_client_closes_ends_quietly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The heartbeat thread waits to retry a 503 while the trial's client is closed (the join
    gives up after a second); the retry then finds the client closed: the thread ends quietly
    instead of dying with "Cannot send a request, as the client has been closed"."""
    unhandled: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: unhandled.append(args.exc_value))
    job = FakeJob(1, lease_s=0.15)
    waiting, release = threading.Event(), threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/heartbeat"):
            return problem(503, "the database is busy; retry shortly")
        return job(request)

    def sleep(seconds: float) -> None:
        if threading.current_thread().name.startswith("optpilot-heartbeat"):
            waiting.set()
            release.wait(10)

    client = OptpilotClient("http://test", transport=httpx.MockTransport(handler), sleep=sleep)
    trial = ClientTrial(client, client.ask_trial("j1", "me"))
    assert waiting.wait(5)
    client.close()
    release.set()
    assert trial._thread is not None
    trial._thread.join(5)
    assert not trial._thread.is_alive() and unhandled == []
    assert job.results == {0: {"state": "failed", "reason": "not reported"}}


def test_the_loop_waits_while_others_hold_trials_then_stops() -> None:
    job = FakeJob(2)
    sleeps: list[float] = []
    with make_client(job, sleeps) as client:
        job.next = 1  # trial 0 is held by another client

        def other_finishes(seconds: float) -> None:
            sleeps.append(seconds)
            job.results[0] = {"value": 3.0}

        client._sleep = other_finishes
        numbers = []
        for trial in client.trials("j1", poll_s=0.2):
            numbers.append(trial.number)
            trial.complete(2.0)
    assert numbers == [1]
    assert sleeps == [0.2], "one poll while trial 0 was running elsewhere"


def test_a_workload_job_has_no_trials_to_hand_out() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={**JOB, "workload": "rosenbrock"})
        return problem(409, "job j1 runs its trials on workers")

    with make_client(handler) as client, pytest.raises(Conflict, match="workers"):
        list(client.trials("j1"))


# -- the CLI against a real API -------------------------------------------------------------

KEY = "cli-test-key"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def api(migrated_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    server = Api(migrated_url, tmp_path / "api.log", env={"OPTPILOT_API_KEYS": KEY})
    server.start()
    monkeypatch.setenv("OPTPILOT_URL", server.base)
    monkeypatch.setenv("OPTPILOT_API_KEY", KEY)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_remote_cli_commands(api: Api, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = cli(capsys, "jobs", "launch", "--family", "mlp", "--params", "5e4",
                       "--trials", "2", "--seed", "0", "--json")
    assert code == 0
    done_id = json.loads(out)["id"]
    with OptpilotClient() as client:  # URL and key from the environment
        for trial in client.trials(done_id):
            trial.report(0, 1.0 + trial.number)
            trial.complete(1.0 + trial.number)
    code, out, _ = cli(capsys, "jobs", "launch", "--family", "cnn", "--params", "1e6",
                       "--trials", "5")
    assert code == 0 and out.startswith("launched job ")
    open_id = out.split()[2]

    code, out, _ = cli(capsys, "jobs", "list")
    assert code == 0 and done_id in out and open_id in out and "2/2" in out
    code, out, _ = cli(capsys, "jobs", "list", "--status", "completed", "--json")
    assert [j["id"] for j in json.loads(out)["items"]] == [done_id]

    code, out, _ = cli(capsys, "jobs", "show", done_id, "--trials")
    assert code == 0 and "completed" in out and "2/2 finished" in out
    assert "best: 1 with" in out and "Per-optimizer summary" in out and "Trials" in out
    code, out, _ = cli(capsys, "jobs", "watch", done_id, "--json")
    assert code == 0 and json.loads(out)["status"] == "completed"

    code, out, _ = cli(capsys, "jobs", "cancel", open_id)
    assert code == 0 and out.startswith(f"job {open_id} cancelled")
    code, out, _ = cli(capsys, "jobs", "watch", open_id, "--interval", "0.1")
    assert code == 1 and "cancelled" in out

    code, out, _ = cli(capsys, "results", "--family", "mlp", "--max-params", "1e5", "--json")
    items = json.loads(out)["items"]
    assert code == 0 and [r["job_id"] for r in items] == [done_id]
    assert items[0]["best_value"] == 1.0
    code, out, _ = cli(capsys, "results")
    assert code == 0 and done_id in out
    code, out, _ = cli(capsys, "results", "--summary", "--params", "4e4")
    assert code == 0 and "Which optimizer won" in out and "1 of 1" in out
    code, out, _ = cli(capsys, "results", "--family", "cnn", "--json")
    assert json.loads(out)["total"] == 0

    # errors: one line on stderr, exit status 2
    for argv, message in [
        (["jobs", "show", "0" * 32], "404 Not Found: job '" + "0" * 32 + "' was not found"),
        (["jobs", "cancel", done_id], "409 Conflict: job " + done_id + " is already completed"),
        (["results", "--limit", "0"], "422 Unprocessable Content: query.limit"),
        (["results", "--family", "lstm"], "422 Unprocessable Content: query.model_family"),
        (["jobs", "launch", "--workload", "nope", "--trials", "2"], "body.workload"),
        (["jobs", "list", "--url", f"http://127.0.0.1:{free_port()}"], "cannot reach the API"),
    ]:
        code, out, err = cli(capsys, *argv)
        assert code == 2 and out == "", argv
        assert err.startswith(f"optpilot {argv[0]}: error: ") and message in err, err
        assert err.count("\n") == 1, err
    monkeypatch.delenv("OPTPILOT_API_KEY")
    code, _, err = cli(capsys, "jobs", "list")
    assert code == 2 and "401 Unauthorized" in err and "OPTPILOT_API_KEY" in err
