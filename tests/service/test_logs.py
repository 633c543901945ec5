"""Structured logs: JSON lines off a terminal, readable lines on one, and job/trial ids on every
line a worker writes during a trial (in-process and in a real worker process)."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient

from service.core.logs import log_context, setup_logging
from tests.service.jobrun import launch, work
from tests.service.processes import ROOT, _env


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)  # other tests may have quietened it
    yield
    optuna.logging.set_verbosity(verbosity)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    optuna.logging.disable_propagation()
    optuna.logging.enable_default_handler()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_off_a_terminal_with_context_extras_and_errors(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPTPILOT_LOG_FORMAT", raising=False)
    stream = io.StringIO()
    setup_logging("api", stream=stream, level="INFO")
    log = logging.getLogger("optpilot.test")
    log.info("outside")
    with log_context(job_id="j1"):
        log.info("claimed")
        with log_context(trial=7):
            log.warning("step %d", 3, extra={"loss": float("nan"), "epoch": 2})
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("failed")
        log.info("after the trial")
    logging.getLogger("uvicorn.access").info("GET /healthz 200")
    optuna.logging.get_logger("optuna.test").info("from optuna")
    out = lines(stream)
    assert [e["msg"] for e in out] == ["outside", "claimed", "step 3", "failed",
                                       "after the trial", "GET /healthz 200", "from optuna"]
    assert all(e["component"] == "api" and e["ts"].endswith("Z") for e in out)
    assert [(e["job_id"], e["trial"]) for e in out[:5]] == [
        (None, None), ("j1", None), ("j1", 7), ("j1", 7), ("j1", None)]
    assert out[2]["level"] == "WARNING" and out[2]["epoch"] == 2 and out[2]["loss"] is None
    assert "ValueError: boom" in out[3]["exc"]
    assert out[5]["logger"] == "uvicorn.access" and out[6]["logger"] == "optuna.test"


def test_readable_lines_on_a_terminal_and_the_format_override(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPTPILOT_LOG_FORMAT", raising=False)
    tty = Terminal()
    setup_logging("worker", stream=tty, device="cpu")
    with log_context(job_id="j2", trial=1):
        logging.getLogger("service.runners.worker").info("hello")
    line = tty.getvalue().strip()
    assert line.endswith("INFO service.runners.worker [worker cpu job j2 trial 1] hello"), line
    monkeypatch.setenv("OPTPILOT_LOG_FORMAT", "json")
    forced = Terminal()
    setup_logging("worker", stream=forced)
    logging.getLogger("x").info("y")
    assert lines(forced)[0]["msg"] == "y"
    assert len(logging.getLogger().handlers) == 1, "setup replaces, never stacks, handlers"


def test_worker_lines_carry_job_and_trial_ids(client: TestClient, migrated_url: str) -> None:
    job_id = launch(client, n_trials=3)
    stream = io.StringIO()
    setup_logging("worker", stream=stream, json_lines=True)
    work(migrated_url, 3)
    out = lines(stream)
    in_trials = [e for e in out if e["trial"] is not None]
    assert {e["trial"] for e in in_trials} == {0, 1, 2}
    assert all(e["job_id"] == job_id for e in in_trials)
    ends = [e for e in in_trials if e.get("state")]
    assert len(ends) == 3 and all(e["logger"] == "service.runners.worker" for e in ends)


def test_a_worker_process_writes_json_lines(client: TestClient, migrated_url: str) -> None:
    job_id = launch(client, n_trials=2)
    code = ("from tuner.workloads.builtin import Rosenbrock; Rosenbrock.default_epochs = 3; "
            "from service.runners.worker import WorkerConfig, worker_main; "
            f"worker_main(WorkerConfig(database_url={migrated_url!r}, max_trials=2, "
            "poll_interval_s=0.05))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    out = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert out and all(e["component"] == "worker" and e["device"] == "cpu" for e in out)
    trial_lines = [e for e in out if e["trial"] is not None]
    assert {e["trial"] for e in trial_lines} == {0, 1}
    assert all(e["job_id"] == job_id for e in trial_lines)
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "completed"
