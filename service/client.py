"""A typed Python client for the optpilot API, and a tuning loop for your own training code.

::

    from service.client import OptpilotClient

    with OptpilotClient("http://127.0.0.1:8000") as client:
        job = client.create_job(n_trials=20, task={"model_family": "mlp",
                                                  "num_parameters": 50_000})
        for trial in client.trials(job["id"]):
            with trial:  # an exception in the body fails the trial with its type and message
                opt = optimizers.create(trial.optimizer, model.parameters(),
                                        **trial.hyperparameters)
                scheduler = trial.scheduler(opt, total_steps=10 * steps_per_epoch)
                for epoch in range(10):
                    val_loss = train_one_epoch(model, opt, scheduler)  # scheduler.step() per step
                    if trial.report(epoch, val_loss):
                        trial.prune()
                        break
                else:
                    trial.complete(val_loss)

Errors are :class:`OptpilotError` (``status``, ``title``, ``detail``, ``errors``), parsed from the
API's ``application/problem+json``, with subclasses per status (:class:`NotFound`,
:class:`Conflict`, ...); an unreachable server is :class:`ConnectionFailed` (status 0).

Retries (``retries`` times, exponential backoff from ``backoff_s``, ``Retry-After`` honoured):
a 503 or a lost connection is retried for requests that are safe to repeat: reads, cancel,
recommendations, history imports (job ids already there are skipped), and the trial calls the
server makes idempotent (asking again with the same ``client_id`` returns the same open trial;
repeating a result is harmless; heartbeats and reports). A request that never left (connection
refused) is retried whatever it is. Launching a job is not repeated after it may have reached
the server, so a job is never created twice.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel

if TYPE_CHECKING:  # torch and the optimizer library load only when a trial builds a scheduler
    import torch

    from optimizers.schedules import ScheduledLR

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "OPTPILOT_URL"
API_KEY_ENV = "OPTPILOT_API_KEY"
MAX_RETRY_AFTER_S = 60.0
MAX_REASON_CHARS = 1_000
ACTIVE_STATUSES = ("queued", "running")
NDJSON = "application/x-ndjson"
IMPORT_BATCH_BYTES = 1_048_576  # the server's default OPTPILOT_MAX_BODY_BYTES
REASON_NOT_REPORTED = "not reported"

Json = dict[str, Any]
TrialState = Literal["running", "completed", "failed", "pruned"]


# -- errors ---------------------------------------------------------------------------------


class OptpilotError(Exception):
    """An error answer of the API (a problem document), or no answer at all (status 0)."""

    def __init__(self, status: int, title: str, detail: str | None = None,
                 errors: Sequence[Mapping[str, Any]] | None = None, *,
                 retry_after_s: float | None = None) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.errors: list[dict[str, Any]] = [dict(e) for e in errors or ()]
        self.retry_after_s = retry_after_s
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"{self.status} {self.title}" if self.status else self.title
        return f"{head}: {self.detail}" if self.detail and self.detail != self.title else head


class Unauthorized(OptpilotError):
    """401: a missing or wrong API key (set ``OPTPILOT_API_KEY``)."""


class NotFound(OptpilotError):
    """404: an unknown job, trial, result or route."""


class Conflict(OptpilotError):
    """409: the state does not allow it (no trial left, lease expired, another result)."""


class ValidationFailed(OptpilotError):
    """422: bad input; ``errors`` lists each offending ``field`` with its ``msg``."""


class ServiceUnavailable(OptpilotError):
    """503: the database is busy or down (still so after the retries)."""


class ConnectionFailed(OptpilotError):
    """The server could not be reached or did not answer (status 0)."""


_ERRORS: dict[int, type[OptpilotError]] = {
    401: Unauthorized, 404: NotFound, 409: Conflict, 422: ValidationFailed,
    503: ServiceUnavailable,
}


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), capped; None if absent."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(raw) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError, IndexError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def error_from_response(response: httpx.Response) -> OptpilotError:
    """The exception for an error response, from its problem document when it has one."""
    status = response.status_code
    title = response.reason_phrase or "Error"
    detail: str | None = None
    errors: list[dict[str, Any]] = []
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        title = str(body.get("title") or title)
        detail = None if body.get("detail") is None else str(body["detail"])
        raw_errors = body.get("errors")
        if isinstance(raw_errors, list):
            errors = [e for e in raw_errors if isinstance(e, dict)]
    elif response.text.strip():
        detail = response.text.strip()[:500]
    cls = _ERRORS.get(status, OptpilotError)
    return cls(status, title, detail, errors, retry_after_s=_retry_after(response))


# -- helpers --------------------------------------------------------------------------------


def default_client_id() -> str:
    """``host:pid:random``: unique per loop, and says where a trial ran."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _path(*parts: str | int) -> str:
    return "/" + "/".join(quote(str(p), safe="") for p in parts)


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value} (fail the trial instead)")
    return value


def _reason(text: str) -> str:
    """Free text the API accepts: no NUL, valid UTF-8, at most 1,000 characters."""
    clean = text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    return clean[: MAX_REASON_CHARS - 1] + "…" if len(clean) > MAX_REASON_CHARS else clean


def _history_fields(namespace: str | None, use_history: bool) -> dict[str, Any]:
    """The request's history fields, only where they differ from the server's defaults."""
    fields: dict[str, Any] = {} if use_history else {"use_history": False}
    if namespace is not None:
        fields["namespace"] = namespace
    return fields


def _task_json(task: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    if isinstance(task, BaseModel):
        return task.model_dump(mode="json")
    return dict(task)


def _parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def lease_remaining_s(expires_at: datetime, response: httpx.Response | None = None) -> float:
    """Seconds left on a lease. The local clock is used unless it disagrees with the server's
    ``Date`` header by more than 2 s (then that header's time is)."""
    local = (expires_at - datetime.now(UTC)).total_seconds()
    date = response.headers.get("date") if response is not None else None
    if date:
        try:
            server = (expires_at - parsedate_to_datetime(date)).total_seconds() - 0.5
        except (TypeError, ValueError, IndexError):
            return local
        if abs(server - local) > 2.0:
            return server
    return local


def _is_pruned(exc: BaseException | None) -> bool:
    if isinstance(exc, TrialPruned):
        return True
    optuna = sys.modules.get("optuna")  # optuna.TrialPruned works too, if it is in use
    exceptions = getattr(optuna, "exceptions", None)
    pruned = getattr(exceptions, "TrialPruned", None)
    return isinstance(pruned, type) and isinstance(exc, pruned)


def _physical_lines(line: str | Mapping[str, Any]) -> list[str]:
    """An export line as the server counts lines: a dict is one; text is split at newlines
    (one trailing newline ends the line, as in a file's lines)."""
    if not isinstance(line, str):
        return [json.dumps(dict(line), ensure_ascii=False, allow_nan=False,
                           separators=(",", ":"))]
    return (line[:-1] if line.endswith("\n") else line).split("\n")


def _lines_shifted(exc: ValidationFailed, offset: int) -> ValidationFailed:
    """A history import's 422 for a request that started ``offset`` lines into the input, with
    its line numbers counted from the input's start."""
    errors = []
    for error in exc.errors:
        if isinstance(error.get("line"), int):
            line = error["line"] + offset
            loc = list(error.get("loc") or [])
            if len(loc) > 1 and isinstance(loc[1], int):
                loc[1] = line
            error = {**error, "line": line, "loc": loc,
                     "field": ".".join(str(p) for p in loc)}
        errors.append(error)
    detail = exc.detail and re.sub(r"^line (\d+)", lambda m: f"line {int(m[1]) + offset}",
                                   exc.detail)
    return ValidationFailed(exc.status, exc.title, detail, errors)


# -- the client -----------------------------------------------------------------------------


class OptpilotClient:
    """The optpilot REST API over one ``httpx.Client``; thread-safe; close it (or use ``with``).

    ``base_url``: default ``$OPTPILOT_URL``, else ``http://127.0.0.1:8000``. ``api_key``: default
    ``$OPTPILOT_API_KEY`` (sent as ``Authorization: Bearer``). ``transport``: an httpx transport
    (tests use ``httpx.MockTransport``); ``sleep``: how retries wait.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None,
                 timeout: float = 30.0, retries: int = 3, backoff_s: float = 0.5, *,
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if retries < 0 or backoff_s < 0:
            raise ValueError("retries and backoff_s must not be negative")
        self.base_url = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "").strip()
        headers = {"Accept": "application/json, application/problem+json",
                   "User-Agent": "optpilot-client"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.retries = retries
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._http = httpx.Client(base_url=self.base_url, headers=headers,
                                  timeout=httpx.Timeout(timeout), transport=transport)
        self._open_trials: set[ClientTrial] = set()
        self._trials_lock = threading.Lock()

    # -- plumbing --

    def close(self) -> None:
        """Close the connection pool, after failing this client's unfinished trials (reason
        ``not reported``) and stopping their heartbeats."""
        with self._trials_lock:
            open_trials = list(self._open_trials)
        for trial in open_trials:
            trial.close(REASON_NOT_REPORTED)
        self._http.close()

    def _track(self, trial: ClientTrial, open_: bool) -> None:
        with self._trials_lock:
            if open_:
                self._open_trials.add(trial)
            else:
                self._open_trials.discard(trial)

    def __enter__(self) -> OptpilotClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OptpilotClient({self.base_url!r})"

    def _backoff(self, attempt: int) -> float:
        return float(self.backoff_s * 2**attempt)

    def _send(self, method: str, path: str, *, json: Any = None,
              params: Mapping[str, Any] | None = None, idempotent: bool,
              content: bytes | None = None,
              headers: Mapping[str, str] | None = None) -> httpx.Response:
        """One request with retries; the response when it succeeded, else raises."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, json=json, params=query,
                                              content=content, headers=headers)
            except httpx.TransportError as exc:
                # a request that never left can always be sent again
                unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout
                                    | httpx.PoolTimeout)
                if (idempotent or unsent) and attempt < self.retries:
                    self._sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                raise ConnectionFailed(0, "Connection failed",
                                       f"{method} {self.base_url}{path}: "
                                       f"{exc or type(exc).__name__}") from exc
            if response.status_code == 503 and idempotent and attempt < self.retries:
                wait = _retry_after(response)
                self._sleep(self._backoff(attempt) if wait is None else wait)
                attempt += 1
                continue
            if response.is_error:
                raise error_from_response(response)
            return response

    def _json(self, method: str, path: str, *, json: Any = None,
              params: Mapping[str, Any] | None = None, idempotent: bool,
              content: bytes | None = None, headers: Mapping[str, str] | None = None) -> Any:
        response = self._send(method, path, json=json, params=params, idempotent=idempotent,
                              content=content, headers=headers)
        return response.json() if response.content else None

    # -- catalog, health, recommendations --

    def health(self) -> Json:
        """``GET /healthz`` (no key needed)."""
        out: Json = self._json("GET", "/healthz", idempotent=True)
        return out

    def optimizers(self) -> list[Json]:
        """The optimizer catalog: name, family, defaults, search space, references."""
        out: list[Json] = self._json("GET", "/v1/optimizers", idempotent=True)["items"]
        return out

    def workloads(self) -> list[Json]:
        """The registered workloads (server-side trials)."""
        out: list[Json] = self._json("GET", "/v1/workloads", idempotent=True)["items"]
        return out

    def recommend(self, task: Mapping[str, Any] | BaseModel, top_k: int = 3, *,
                  namespace: str | None = None, use_history: bool = True) -> Json:
        """Ranked optimizers with hyperparameter priors and rationale for a task description
        (a dict or ``tuner.task.TaskDescription``), learning from the finished jobs of
        ``namespace`` (the server's default one when None) unless ``use_history`` is false.
        Retried safely: a repeat only stores the same recommendation again."""
        body: dict[str, Any] = {"task": _task_json(task), "top_k": top_k,
                                **_history_fields(namespace, use_history)}
        out: Json = self._json("POST", "/v1/recommendations", json=body, idempotent=True)
        return out

    # -- jobs --

    def create_job(self, workload: str | None = None, *, n_trials: int,
                   task: Mapping[str, Any] | BaseModel | None = None,
                   optimizers: Sequence[str] | None = None, seed: int | None = None,
                   pruner: Literal["median", "hyperband", "none"] = "median",
                   timeout_s: float | None = None, max_retries: int | None = None,
                   namespace: str | None = None, use_history: bool = True) -> Json:
        """Launch a tuning job: server-side trials of ``workload``, or (``workload=None``, with a
        ``task``) trials you evaluate yourself through :meth:`trials`. It learns from the
        finished jobs of ``namespace`` unless ``use_history`` is false, and adds itself to them
        when it completes. Returns the queued job."""
        body: dict[str, Any] = {"workload": workload, "n_trials": n_trials, "pruner": pruner,
                                **_history_fields(namespace, use_history)}
        if task is not None:
            body["task"] = _task_json(task)
        if optimizers is not None:
            body["optimizers"] = list(optimizers)
        if seed is not None:
            body["seed"] = seed
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
        if max_retries is not None:
            body["max_retries"] = max_retries
        out: Json = self._json("POST", "/v1/jobs", json=body, idempotent=False)
        return out

    def list_jobs(self, status: str | None = None, workload: str | None = None,
                  limit: int = 50, offset: int = 0) -> Json:
        """A page of jobs, newest first: ``{"items", "total", "limit", "offset"}``."""
        out: Json = self._json("GET", "/v1/jobs", idempotent=True, params={
            "status": status, "workload": workload, "limit": limit, "offset": offset})
        return out

    def get_job(self, job_id: str) -> Json:
        """Status, progress, best so far and the per-optimizer summary."""
        out: Json = self._json("GET", _path("v1", "jobs", job_id), idempotent=True)
        return out

    def cancel_job(self, job_id: str) -> Json:
        """Stop new trials (cancelling twice is harmless; a finished job is a Conflict)."""
        out: Json = self._json("POST", _path("v1", "jobs", job_id, "cancel"), idempotent=True)
        return out

    def job_trials(self, job_id: str) -> list[Json]:
        """Every trial of the job, in order (state, value, hyperparameters, reason, ...)."""
        out: list[Json] = self._json("GET", _path("v1", "jobs", job_id, "trials"),
                                     idempotent=True)
        return out

    def wait_job(self, job_id: str, timeout_s: float | None = None,
                 poll_s: float = 1.0) -> Json:
        """Poll until the job is completed, failed or cancelled; TimeoutError after
        ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get_job(job_id)
            if job["status"] not in ACTIVE_STATUSES:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout_s} s")
            time.sleep(poll_s)

    # -- results --

    def results(self, *, model_family: str | None = None, task_type: str | None = None,
                optimizer: str | None = None, workload: str | None = None,
                min_parameters: int | None = None, max_parameters: int | None = None,
                limit: int = 50, offset: int = 0) -> Json:
        """A page of past results, newest first (filters combine with AND)."""
        out: Json = self._json("GET", "/v1/results", idempotent=True, params={
            "model_family": model_family, "task_type": task_type, "optimizer": optimizer,
            "workload": workload, "min_parameters": min_parameters,
            "max_parameters": max_parameters, "limit": limit, "offset": offset})
        return out

    def results_summary(self, *, model_family: str | None = None,
                        task_type: str | None = None, optimizer: str | None = None,
                        workload: str | None = None, min_parameters: int | None = None,
                        max_parameters: int | None = None, num_parameters: int | None = None,
                        factor: float | None = None) -> Json:
        """Which optimizer won how often; with ``num_parameters``, among tasks within
        ``factor`` (default 10) of that size."""
        out: Json = self._json("GET", "/v1/results/summary", idempotent=True, params={
            "model_family": model_family, "task_type": task_type, "optimizer": optimizer,
            "workload": workload, "min_parameters": min_parameters,
            "max_parameters": max_parameters, "num_parameters": num_parameters,
            "factor": factor})
        return out

    def get_result(self, result_id: str) -> Json:
        out: Json = self._json("GET", _path("v1", "results", result_id), idempotent=True)
        return out

    # -- history and insights --

    def rule_insights(self, namespace: str | None = None) -> Json:
        """Each rule of the prior against the namespace's finished jobs (default namespace
        ``default``), the rows where the rules disagree most with the history first."""
        out: Json = self._json("GET", "/v1/insights/rules", idempotent=True,
                               params={"namespace": namespace})
        return out

    def export_history(self, namespace: str | None = None) -> list[Json]:
        """The history (of ``namespace``; every namespace without one), oldest first: one
        dict per finished job, the lines of ``optpilot history export``."""
        response = self._send("GET", "/v1/history", idempotent=True,
                              params={"namespace": namespace},
                              headers={"Accept": f"{NDJSON}, application/problem+json"})
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]

    def import_history(self, lines: Iterable[str | Mapping[str, Any]], *,
                       batch_bytes: int = IMPORT_BATCH_BYTES) -> Json:
        """Add finished jobs to the server's history: export lines (text) or their dicts.
        Job ids it knows already are skipped, so an import repeated is harmless:
        ``{"added": n, "skipped": m}``.

        Lines go in requests of at most ``batch_bytes`` (halved while the server answers 413);
        each request is all or nothing. A bad line is a :class:`ValidationFailed` naming its
        number (counted over ``lines``, text split at newlines) and field; the requests before
        it were imported."""
        encoded = [piece.encode("utf-8", "surrogatepass")  # a bad character: a 422 on its line
                   for line in lines for piece in _physical_lines(line)]
        totals = {"added": 0, "skipped": 0}
        start = 0
        while start < len(encoded):
            end, size = start + 1, len(encoded[start]) + 1
            while end < len(encoded) and size + len(encoded[end]) + 1 <= batch_bytes:
                size += len(encoded[end]) + 1
                end += 1
            self._import_lines(encoded[start:end], start, totals)
            start = end
        return totals

    def _import_lines(self, lines: list[bytes], offset: int, totals: dict[str, int]) -> None:
        try:
            out = self._json("POST", "/v1/history", content=b"".join(b"%s\n" % x for x in lines),
                             idempotent=True, headers={"Content-Type": NDJSON})
        except OptpilotError as exc:
            if exc.status == 413 and len(lines) > 1:
                half = len(lines) // 2
                self._import_lines(lines[:half], offset, totals)
                self._import_lines(lines[half:], offset + half, totals)
                return
            if isinstance(exc, ValidationFailed) and offset:
                raise _lines_shifted(exc, offset) from None
            raise
        totals["added"] += int(out["added"])
        totals["skipped"] += int(out["skipped"])

    # -- client-evaluated trials, one call each --

    def _ask(self, job_id: str, client_id: str) -> tuple[Json, float]:
        response = self._send("POST", _path("v1", "jobs", job_id, "trials"),
                              json={"client_id": client_id}, idempotent=True)
        data: Json = response.json()
        return data, lease_remaining_s(_parse_time(data["lease_expires_at"]), response)

    def ask_trial(self, job_id: str, client_id: str) -> Json:
        """A new trial to evaluate, or ``client_id``'s open one; Conflict when none is left.
        Prefer :meth:`trials`, which also keeps the lease alive."""
        return self._ask(job_id, client_id)[0]

    def report_trial(self, job_id: str, number: int, step: int, value: float) -> bool:
        """Record an intermediate value; True when the trial should be pruned."""
        out = self._json("POST", _path("v1", "jobs", job_id, "trials", number, "reports"),
                         json={"step": step, "value": _finite("value", value)},
                         idempotent=True)
        return bool(out["should_prune"])

    def _heartbeat(self, job_id: str, number: int) -> tuple[Json, float]:
        response = self._send("POST", _path("v1", "jobs", job_id, "trials", number, "heartbeat"),
                              idempotent=True)
        data: Json = response.json()
        return data, lease_remaining_s(_parse_time(data["lease_expires_at"]), response)

    def heartbeat_trial(self, job_id: str, number: int) -> Json:
        """Extend the trial's lease: ``{"number", "lease_expires_at"}``."""
        return self._heartbeat(job_id, number)[0]

    def finish_trial(self, job_id: str, number: int, *, value: float | None = None,
                     state: Literal["failed", "pruned"] | None = None,
                     reason: str | None = None) -> Json:
        """Post the trial's result: ``value``, or ``state`` (failed/pruned) with a ``reason``.
        The same result twice is harmless; another one is a Conflict, and so is any result
        after the lease expired."""
        if (value is None) == (state is None):
            raise ValueError("give either value or state")
        body: dict[str, Any]
        if value is not None:
            body = {"value": _finite("value", value)}
        else:
            body = {"state": state}
            if reason is not None:
                body["reason"] = _reason(reason)
        out: Json = self._json("POST", _path("v1", "jobs", job_id, "trials", number, "result"),
                               json=body, idempotent=True)
        return out

    # -- the tuning loop --

    def trials(self, job_id: str, client_id: str | None = None, *, wait: bool = True,
               poll_s: float = 1.0) -> Generator[ClientTrial, None, None]:
        """Trials of a ``workload: null`` job to evaluate here, until the job has none left.

        Each :class:`ClientTrial` keeps its lease alive from a background thread until it is
        completed, failed or pruned. A trial left unfinished when the loop moves on (or
        stops) is failed with reason ``not reported``, so its lease is never left to expire.
        A trial whose lease was lost anyway (a stall longer than the lease) is logged as a
        warning and skipped (``trial.lease_lost``): its ``report`` says stop, its result is
        dropped, and the loop asks for the next trial.

        When no new trial is left but other clients still hold some (``wait=True``), the loop
        polls every ``poll_s`` seconds: a trial whose lease expires is offered again, and this
        loop takes it. It ends when the job is completed, failed or cancelled, or with
        ``wait=False`` at the first "no trial left".
        """
        client_id = client_id or default_client_id()
        while True:
            try:
                data, remaining = self._ask(job_id, client_id)
            except Conflict:
                if wait and self._others_hold_trials(job_id):
                    self._sleep(poll_s)
                    continue
                return
            trial = ClientTrial(self, data, remaining)
            try:
                yield trial
            finally:
                trial.close(REASON_NOT_REPORTED)

    def _others_hold_trials(self, job_id: str) -> bool:
        """After a 409 on ask: might a trial still come back (running or re-offered)?"""
        job = self.get_job(job_id)
        if job["workload"] is not None:
            raise Conflict(409, "Conflict", f"job {job_id} runs its trials on workers "
                           f"(workload {job['workload']!r}); it has no trials to hand out")
        progress = job["progress"]
        return bool(job["status"] in ACTIVE_STATUSES
                    and progress["running"] + progress["waiting"] > 0)


# -- one trial ------------------------------------------------------------------------------


class TrialPruned(Exception):
    """Raise inside ``with trial:`` to prune it (``optuna.TrialPruned`` works as well)."""


class ClientTrial:
    """One leased trial: train with ``optimizer`` and ``hyperparameters`` under ``schedule``
    (:meth:`scheduler` builds it), ``report`` per epoch, then ``complete``, ``fail`` or
    ``prune``.

    Heartbeats go out from a daemon thread every third of the lease until the trial is
    finished. ``with trial:`` fails the trial with the exception's type and message if the
    body raises (and prunes it on :class:`TrialPruned`); leaving the block without a result
    fails it with reason ``not reported``.

    If the server reaped the trial anyway (its lease expired: the client stalled, or the
    server did, for longer than the lease), the trial is lost: a warning is logged,
    ``lease_lost`` becomes True, :meth:`report` answers True (stop) without asking the server,
    and :meth:`complete`, :meth:`fail` and :meth:`prune` record nothing and raise nothing, so
    the loop goes on with the next trial. The server offers a lost trial's parameters again
    (within the job's ``max_retries``).
    """

    def __init__(self, client: OptpilotClient, data: Mapping[str, Any],
                 remaining_s: float | None = None, *, heartbeats: bool = True) -> None:
        self.client = client
        self.job_id = str(data["job_id"])
        self.number = int(data["number"])
        self.client_id = str(data["client_id"])
        self.optimizer = str(data["optimizer"])
        self.hyperparameters: dict[str, float] = {
            str(k): float(v) for k, v in data["hyperparameters"].items()}
        schedule = data.get("schedule")
        self.schedule: dict[str, Any] | None = None if schedule is None else dict(schedule)
        """The lr schedule's fields (``optimizers.Schedule``): ``hyperparameters["lr"]`` is its
        peak. None in jobs created before schedules."""
        self.lease_expires_at = _parse_time(str(data["lease_expires_at"]))
        self.state: TrialState = "running"
        self.value: float | None = None
        self.reason: str | None = None
        self.lease_lost = False
        """True once the server said the trial is no longer this client's (lease expired)."""
        if remaining_s is None:
            remaining_s = lease_remaining_s(self.lease_expires_at)
        self._interval_s = _heartbeat_interval(remaining_s)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        client._track(self, True)
        if heartbeats:
            self._start_heartbeats()

    def __repr__(self) -> str:
        return (f"ClientTrial(job={self.job_id!r}, number={self.number}, "
                f"optimizer={self.optimizer!r}, hyperparameters={self.hyperparameters!r}, "
                f"schedule={self.schedule!r}, "
                f"state={self.state!r})")

    @property
    def finished(self) -> bool:
        return self.state != "running"

    # -- what the user calls --

    def scheduler(self, optimizer: torch.optim.Optimizer,
                  total_steps: int | None = None) -> ScheduledLR:
        """A torch ``LRScheduler`` for ``optimizer`` running this trial's schedule over
        ``total_steps`` optimizer steps: call its ``step()`` after every ``optimizer.step()``.

        Build ``optimizer`` with this trial's hyperparameters first (the schedule scales each
        group's lr from its peak). A ``none`` schedule (schedule-free optimizers) gives a
        scheduler that leaves the lr alone. A trial of a job created before schedules gets the
        schedule its lr was recommended for: 5% linear warm-up, then cosine decay to 0.
        ``total_steps`` may be left out only for schedules without a horizon.
        """
        import optimizers
        from tuner.rules import DEFAULT_SCHEDULE

        schedule = DEFAULT_SCHEDULE if self.schedule is None else self.schedule
        return optimizers.build_scheduler(optimizer, schedule, total_steps)

    def report(self, step: int, value: float) -> bool:
        """Record the metric at ``step`` (an epoch); True when the trial should stop (the
        pruner says so, the job was cancelled, or the lease was lost): then call
        :meth:`prune`."""
        if self.lease_lost:
            return True
        self._check_running("report")
        try:
            return self.client.report_trial(self.job_id, self.number, step, value)
        except Conflict as exc:
            self._lose(exc)
            return True

    def complete(self, value: float) -> None:
        """Finish with the trial's final metric (a finite number)."""
        self._finish("completed", value=_finite("value", value))

    def fail(self, reason: str) -> None:
        """Finish as failed (the budget counts it), with a short reason."""
        self._finish("failed", reason=reason)

    def prune(self, reason: str | None = None) -> None:
        """Finish as pruned (stopped early on purpose)."""
        self._finish("pruned", reason=reason)

    def close(self, reason: str = REASON_NOT_REPORTED) -> None:
        """Fail the trial with ``reason`` unless it is finished; stop the heartbeats. Errors
        from the server are logged, not raised (the lease then expires on its own)."""
        try:
            if not self.finished and not self.lease_lost:
                self._finish("failed", reason=reason)
        except (OptpilotError, RuntimeError) as exc:  # RuntimeError: the client was closed
            log.warning("trial %d of job %s could not be failed (%s): %s", self.number,
                        self.job_id, reason, exc)
        finally:
            self._stop_heartbeats()
            self.client._track(self, False)

    def __enter__(self) -> ClientTrial:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc is None:
            self.close(REASON_NOT_REPORTED)
            return False
        if _is_pruned(exc):
            if not self.finished:
                try:
                    self.prune(str(exc) or None)
                finally:
                    self._stop_heartbeats()
            return True
        message = str(exc)
        self.close(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)
        return False

    # -- internals --

    def _check_running(self, what: str) -> None:
        if self.finished:
            raise RuntimeError(f"trial {self.number} is already {self.state}; cannot {what}")

    def _finish(self, state: TrialState, *, value: float | None = None,
                reason: str | None = None) -> None:
        with self._lock:
            if self.lease_lost:
                return  # already reported as lost; the server takes no result for it
            if self.finished:
                if (state, value, reason) == (self.state, self.value, self.reason):
                    return  # the same result again: harmless, as on the server
                self._check_running(f"mark it {state}")
            self._stop_heartbeats()
            try:
                if state == "completed":
                    self.client.finish_trial(self.job_id, self.number, value=value)
                else:
                    self.client.finish_trial(self.job_id, self.number,
                                             state="failed" if state == "failed" else "pruned",
                                             reason=reason)
            except Conflict as exc:  # the lease expired: the trial is no longer ours
                self._lose(exc)
                return
            except BaseException:
                self._start_heartbeats()  # not recorded: keep the lease while the user retries
                raise
            self.state, self.value, self.reason = state, value, reason
            self.client._track(self, False)

    def _lose(self, exc: OptpilotError) -> None:
        """The server no longer takes anything for this trial: say so once, stop beating."""
        if not self.lease_lost:
            self.lease_lost = True
            self.state, self.reason = "failed", exc.detail
            log.warning("trial %d of job %s lost its lease (the server failed it and offers "
                        "it again within the job's max_retries); its result is dropped: %s",
                        self.number, self.job_id, exc)
        self._stop.set()
        self.client._track(self, False)

    def _start_heartbeats(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(self._stop,), daemon=True,
            name=f"optpilot-heartbeat-{self.job_id}-{self.number}")
        self._thread.start()

    def _stop_heartbeats(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)  # one in-flight heartbeat at most; never block for long

    def _beat(self, stop: threading.Event) -> None:
        interval = self._interval_s
        while not stop.wait(interval):
            try:
                data, remaining = self.client._heartbeat(self.job_id, self.number)
            except (Conflict, NotFound) as exc:
                if not stop.is_set():
                    self._lose(exc)
                return
            except OptpilotError as exc:  # retried already; keep trying while time is left
                if stop.is_set():
                    return
                log.warning("heartbeat of trial %d of job %s failed: %s", self.number,
                            self.job_id, exc)
                interval = max(interval / 2, 0.05)
                continue
            except RuntimeError:  # the client was closed under an in-flight heartbeat
                return
            self.lease_expires_at = _parse_time(str(data["lease_expires_at"]))
            interval = _heartbeat_interval(remaining)


def _heartbeat_interval(remaining_s: float) -> float:
    """A third of what is left of the lease (at least 50 ms, at most 5 minutes)."""
    if not math.isfinite(remaining_s) or remaining_s <= 0:
        return 0.5
    return min(max(remaining_s / 3, 0.05), 300.0)


__all__ = [
    "ClientTrial",
    "Conflict",
    "ConnectionFailed",
    "NotFound",
    "OptpilotClient",
    "OptpilotError",
    "ServiceUnavailable",
    "TrialPruned",
    "Unauthorized",
    "ValidationFailed",
    "default_client_id",
    "error_from_response",
]
