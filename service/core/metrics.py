"""Prometheus metrics, served at ``GET /metrics`` (``service.api.routes.health``; text format,
needs the API key when keys are set).

Per app (so per process) one registry with:

=============================================  =========  ==========================================
name                                           type       what
=============================================  =========  ==========================================
``optpilot_http_requests_total``               counter    requests by ``method``, ``route`` (the
                                                          path template, e.g. ``/v1/jobs/{job_id}``;
                                                          ``<unmatched>`` for unknown paths) and
                                                          ``status``
``optpilot_http_request_duration_seconds``     histogram  latency by ``method`` and ``route``
``optpilot_jobs``                              gauge      jobs by ``status`` (every status, 0 too)
``optpilot_trials``                            gauge      trials of the service's studies by
                                                          ``state`` (complete, pruned, fail,
                                                          running, waiting)
``optpilot_trials_completed_per_second``       gauge      completed trials in the last 60 s / 60
``optpilot_worker_live_trials``                gauge      running trials with a heartbeat within
                                                          the grace period (busy workers)
``optpilot_worker_stale_trials``               gauge      running trials whose heartbeat is older
                                                          (lost workers not yet reaped)
``optpilot_worker_heartbeat_age_seconds``      gauge      age of the newest heartbeat (absent when
                                                          none was ever recorded)
``optpilot_database_up``                       gauge      1 when the scrape could read the database
=============================================  =========  ==========================================

The database figures are computed at scrape time by :class:`DatabaseCollector` with a few
aggregate queries (``GROUP BY``; no row is loaded), on the service's tables and Optuna's
(``trials``, ``studies``, ``trial_heartbeats``) joined to ``jobs`` by study name, so only the
service's studies count. Times compare as Optuna does: trial times are naive UTC, heartbeats are
compared with the database's own ``now()``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.models import JOB_STATUSES, Job
from service.core.route_templates import RouteTemplates
from service.core.storage import DEFAULT_GRACE_PERIOD_S

log = logging.getLogger(__name__)

UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
TRIAL_STATES = ("complete", "pruned", "fail", "running", "waiting")
RATE_WINDOW_S = 60.0

# Optuna's own tables, only the columns read here (typed, so datetimes bind the same way
# Optuna writes them on every backend).
_studies = sa.table("studies", sa.column("study_id", sa.Integer),
                    sa.column("study_name", sa.String))
_trials = sa.table("trials", sa.column("trial_id", sa.Integer),
                   sa.column("study_id", sa.Integer), sa.column("state", sa.String),
                   sa.column("datetime_complete", sa.DateTime))
_heartbeats = sa.table("trial_heartbeats", sa.column("trial_id", sa.Integer),
                       sa.column("heartbeat", sa.DateTime))


def _service_trials() -> Any:
    """``trials`` joined to the service's studies (those named by a job)."""
    return (_trials.join(_studies, _studies.c.study_id == _trials.c.study_id)
            .join(Job.__table__, Job.__table__.c.study_name == _studies.c.study_name))


class DatabaseCollector(Collector):
    """Jobs, trials, throughput and worker heartbeats, queried at scrape time."""

    def __init__(self, engine: Engine, grace_period_s: float = DEFAULT_GRACE_PERIOD_S) -> None:
        self.engine = engine
        self.grace_period_s = grace_period_s

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked collector: nothing is queried at registration

    def collect(self) -> Iterable[Metric]:
        up = 1.0
        jobs = GaugeMetricFamily("optpilot_jobs", "Jobs by status.", labels=["status"])
        try:
            counts = self._jobs()
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot count jobs: %s", exc)
            counts, up = {}, 0.0
        for status in JOB_STATUSES:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs

        trials = GaugeMetricFamily("optpilot_trials",
                                   "Trials of the service's studies by state.", labels=["state"])
        rate = GaugeMetricFamily("optpilot_trials_completed_per_second",
                                 f"Trials completed in the last {RATE_WINDOW_S:g} s, per second.")
        live = GaugeMetricFamily("optpilot_worker_live_trials",
                                 "Running trials with a heartbeat within the grace period "
                                 f"({self.grace_period_s:g} s).")
        stale = GaugeMetricFamily("optpilot_worker_stale_trials",
                                  "Running trials whose last heartbeat is older than the grace "
                                  "period (their worker is probably gone).")
        age = GaugeMetricFamily("optpilot_worker_heartbeat_age_seconds",
                                "Seconds since the newest worker heartbeat.")
        try:
            by_state, recent = self._trials()
            newest, live_n, stale_n = self._heartbeats()
        except SQLAlchemyError as exc:  # Optuna's tables are made with the first storage
            log.info("metrics: Optuna tables not readable: %s", exc)
            by_state, recent, newest, live_n, stale_n = {}, 0, None, 0, 0
        for state in TRIAL_STATES:
            trials.add_metric([state], by_state.get(state, 0))
        rate.add_metric([], recent / RATE_WINDOW_S)
        live.add_metric([], live_n)
        stale.add_metric([], stale_n)
        yield from (trials, rate, live, stale)
        if newest is not None:
            age.add_metric([], max(0.0, newest))
            yield age
        db_up = GaugeMetricFamily("optpilot_database_up",
                                  "1 when the last scrape could read the database.")
        db_up.add_metric([], up)
        yield db_up

    def _jobs(self) -> dict[str, int]:
        table = Job.__table__
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(table.c.status, sa.func.count())
                                .group_by(table.c.status)).all()
        return {str(status): int(n) for status, n in rows}

    def _trials(self) -> tuple[dict[str, int], int]:
        cutoff = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=RATE_WINDOW_S)
        recent = sa.func.sum(sa.case((_trials.c.datetime_complete >= cutoff, 1), else_=0))
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(_trials.c.state, sa.func.count(), recent)
                                .select_from(_service_trials())
                                .group_by(_trials.c.state)).all()
        by_state = {str(state).lower(): int(n) for state, n, _ in rows}
        completed_recently = sum(int(r or 0) for state, _, r in rows
                                 if str(state).lower() == "complete")
        return by_state, completed_recently

    def _heartbeats(self) -> tuple[float | None, int, int]:
        with self.engine.connect() as conn:
            now = conn.execute(sa.select(sa.func.now())).scalar()
            if now is None:
                return None, 0, 0
            if isinstance(now, str):  # some SQLite builds hand back text
                now = datetime.fromisoformat(now)
            now = now.replace(tzinfo=None)
            cutoff = now - timedelta(seconds=self.grace_period_s)
            fresh = sa.func.sum(sa.case((_heartbeats.c.heartbeat >= cutoff, 1), else_=0))
            old = sa.func.sum(sa.case((_heartbeats.c.heartbeat < cutoff, 1), else_=0))
            rows = conn.execute(
                sa.select(_trials.c.state, sa.func.max(_heartbeats.c.heartbeat), fresh, old)
                .select_from(_service_trials().join(
                    _heartbeats, _heartbeats.c.trial_id == _trials.c.trial_id))
                .group_by(_trials.c.state)).all()
        newest = max((r[1] for r in rows if r[1] is not None), default=None)
        running = [r for r in rows if str(r[0]).lower() == "running"]
        live_n = sum(int(r[2] or 0) for r in running)
        stale_n = sum(int(r[3] or 0) for r in running)
        if isinstance(newest, str):
            newest = datetime.fromisoformat(newest)
        age = None if newest is None else (now - newest.replace(tzinfo=None)).total_seconds()
        return age, live_n, stale_n


class Metrics:
    """One app's registry: HTTP request metrics plus the database collector."""

    def __init__(self, engine: Engine, grace_period_s: float = DEFAULT_GRACE_PERIOD_S) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "optpilot_http_requests", "HTTP requests by method, route template and status.",
            ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "optpilot_http_request_duration_seconds",
            "HTTP request latency by method and route template.", ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
        self.database = DatabaseCollector(engine, grace_period_s)
        self.registry.register(self.database)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "OTHER"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def route_template(scope: Scope, templates: RouteTemplates | None = None) -> str:
    """The matched route's path template (bounded cardinality), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return f"{path}/{{path}}" if isinstance(route, Mount) else (path or "/")
    if templates is not None:  # answered before routing, or no route matched
        found = templates.match(str(scope.get("method", "GET")), str(scope.get("path", "")))
        if found is not None:
            return found
    return UNMATCHED


class MetricsMiddleware:
    """Pure ASGI middleware counting every HTTP request (outermost, so 413s count too)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, api: Any = None) -> None:
        self.app, self.metrics = app, metrics
        self.templates = RouteTemplates(api) if api is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception escaping the app ends as a 500

        async def observe_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observe_send)
        finally:
            self.metrics.observe(scope.get("method", "GET"),
                                 route_template(scope, self.templates),
                                 status, time.perf_counter() - started)
