"""Real processes for end-to-end tests: an API server (``optpilot serve --workers 0``) and
workers (``optpilot worker``), each its own OS process on the test database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without its optpilot settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPTPILOT_")}
    env.pop("DATABASE_URL", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def optpilot(*args: str, log: Path,
             env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "service.cli", *args], cwd=ROOT,
                            env=_env(env), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


class Api:
    """``env``: extra environment for the API process (e.g. ``OPTPILOT_LEASE_S``)."""

    def __init__(self, url: str, log: Path, env: Mapping[str, str] | None = None) -> None:
        self.db_url, self.log, self.env = url, log, dict(env or {})
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = optpilot("serve", "--workers", "0", "--port", str(self.port),
                                "--db", self.db_url, log=self.log, env=self.env)
        wait_for(lambda: _healthy(self.base), 60, f"API on {self.base} (log {self.log})")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30)


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str,
             interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


Processes = list[subprocess.Popen[bytes]]


@contextmanager
def services(db_url: str, tmp: Path, workers: int = 1, worker_flags: tuple[str, ...] = (),
             env: Mapping[str, str] | None = None) -> Iterator[tuple[Api, Processes]]:
    """An API process (with extra ``env``) and ``workers`` worker processes (each a single CPU
    worker)."""
    api = Api(db_url, tmp / "api.log", env)
    procs: Processes = []
    try:
        api.start()
        for i in range(workers):
            procs.append(start_worker(db_url, tmp / f"worker{i}.log", worker_flags))
        yield api, procs
    finally:
        for p in procs:
            stop_process(p)
        api.stop()


def start_worker(db_url: str, log: Path, flags: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    return optpilot("worker", "--db", db_url, "--devices", "cpu", "--threads", "1",
                    "--poll-interval", "0.2", *flags, log=log)


def wait_job(client: httpx.Client, job_id: str, timeout_s: float = 180) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    result: dict[str, Any] = wait_for(finished, timeout_s, f"job {job_id}", 0.3)
    return result
