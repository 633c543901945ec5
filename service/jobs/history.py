"""The service's history: finished jobs, kept as evidence for recommendations and new jobs.

Every job that completes writes its outcome (``tuner.evidence.history.JobOutcome``) into the
``history`` table, in the transaction that completes it (:func:`record_job`); failed and
cancelled jobs write none. Outcomes exported by another server go into the same table
(:func:`import_outcomes`), idempotently: a job id already there, or the id of one of this
server's own jobs (which writes its outcome itself), is left as it is. The history leaves as
JSON lines (:func:`export_lines`, the format of ``tuner.evidence.export``) and its outcomes are
held against the rules by :func:`namespace_insights` (``tuner.evidence.insights``).

A namespace's history is read as one evidence pool, the published trainings plus its jobs
(``tuner.tuning.evidence_with``). :class:`HistoryPools` keeps each namespace's pool in the
process and, on each use, asks the database only for the newest row's time (one index lookup);
when rows were added since, it reads those and rebuilds the pool.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core.models import HistoryEntry, Job, utcnow
from tuner.evidence.export import dump_line
from tuner.evidence.history import JobOutcome, OptimizerResult
from tuner.evidence.insights import RuleInsights, rule_insights
from tuner.evidence.records import EvidencePool
from tuner.task import TaskDescription
from tuner.tuning import StudySummary, evidence_with


def outcome_of(job: Job, summary: StudySummary, metric: str, trials_used: int,
               finished_at: datetime | None = None) -> JobOutcome:
    """The outcome of a job that just completed, from its study's summary."""
    return JobOutcome(
        job_id=job.id, task=TaskDescription.model_validate(job.task), metric=metric,
        direction="minimize" if summary.direction == "minimize" else "maximize",
        trials_used=trials_used,
        per_optimizer=tuple(
            OptimizerResult(name, s.completed, s.best_value, dict(s.best_hyperparameters),
                            s.best_schedule)
            for name, s in sorted(summary.per_optimizer.items())),
        namespace=job.namespace, workload=job.workload,
        best_schedule=summary.best_schedule, finished_at=finished_at,
    )


def _entry(outcome: JobOutcome, origin: str) -> HistoryEntry:
    return HistoryEntry(
        job_id=outcome.job_id, namespace=outcome.namespace,
        model_family=outcome.task.model_family, task_type=outcome.task.task_type,
        num_parameters=outcome.task.num_parameters, origin=origin,
        outcome=outcome.to_json(), finished_at=outcome.finished_at, created_at=utcnow())


def record_job(session: Session, outcome: JobOutcome) -> None:
    """Add a completed job's outcome to the session (committed with the job's completion)."""
    session.add(_entry(outcome, "local"))


@dataclass(frozen=True)
class ImportReport:
    added: int
    skipped: int  # already in the history, or one of this server's jobs (same job id)


def _known_ids(session: Session, ids: list[str]) -> set[str]:
    known: set[str] = set()
    for start in range(0, len(ids), 500):  # bounded IN lists
        chunk = ids[start:start + 500]
        known.update(session.scalars(sa.select(HistoryEntry.job_id)
                                     .where(HistoryEntry.job_id.in_(chunk))))
        known.update(session.scalars(sa.select(Job.id).where(Job.id.in_(chunk))))
    return known


def import_outcomes(session: Session, outcomes: Iterable[JobOutcome]) -> ImportReport:
    """Add outcomes from elsewhere, all or nothing; ids already in the history, and ids of this
    server's own jobs, are skipped (an import repeated is harmless). An import racing another
    one with the same new ids is redone once, and skips those the other one added."""
    batch = list(outcomes)
    ids = [o.job_id for o in batch]
    if len(set(ids)) != len(ids):
        duplicated = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"job {duplicated!r} appears twice in the import")
    try:
        return _add_fresh(session, batch)
    except IntegrityError:  # another import added some of them meanwhile: skip those
        session.rollback()
        return _add_fresh(session, batch)


def _add_fresh(session: Session, batch: list[JobOutcome]) -> ImportReport:
    known = _known_ids(session, [o.job_id for o in batch])
    fresh = [o for o in batch if o.job_id not in known]
    session.add_all(_entry(o, "imported") for o in fresh)
    session.commit()
    return ImportReport(len(fresh), len(batch) - len(fresh))


def read_outcomes(session: Session, namespace: str | None = None,
                  since: datetime | None = None) -> list[JobOutcome]:
    """The history (of ``namespace``; rows created at or after ``since``), oldest first."""
    query = sa.select(HistoryEntry.outcome).order_by(HistoryEntry.created_at,
                                                     HistoryEntry.job_id)
    if namespace is not None:
        query = query.where(HistoryEntry.namespace == namespace)
    if since is not None:
        query = query.where(HistoryEntry.created_at >= since)
    return [JobOutcome.from_json(row) for row in session.scalars(query)]


def export_lines(session: Session, namespace: str | None = None) -> list[str]:
    """The history (of ``namespace``; every namespace without one), oldest first, as the
    lines of an export file (``tuner.evidence.export.dump_line``), without their newlines."""
    return [dump_line(outcome) for outcome in read_outcomes(session, namespace)]


def namespace_insights(session: Session, namespace: str) -> RuleInsights:
    """Each rule against the namespace's history (``tuner.evidence.insights``)."""
    return rule_insights(read_outcomes(session, namespace))


@dataclass
class _Cached:
    newest: datetime | None = None
    outcomes: dict[str, JobOutcome] = field(default_factory=dict)
    pool: EvidencePool = field(default_factory=lambda: evidence_with(()))


MAX_CACHED_NAMESPACES = 64


class HistoryPools:
    """Per namespace, the evidence pool of its history, kept between requests (thread-safe).

    Only namespaces with a history are kept, at most ``capacity`` of them, least recently used
    first out: a request naming any namespace cannot grow the process without bound."""

    def __init__(self, capacity: int = MAX_CACHED_NAMESPACES) -> None:
        self._cached: OrderedDict[str, _Cached] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def pool(self, session: Session, namespace: str) -> EvidencePool:
        newest = session.scalar(sa.select(sa.func.max(HistoryEntry.created_at))
                                .where(HistoryEntry.namespace == namespace))
        if newest is None:
            return evidence_with(())  # no history: the published trainings alone
        with self._lock:
            cached = self._cached.setdefault(namespace, _Cached())
            self._cached.move_to_end(namespace)
            while len(self._cached) > self._capacity:
                self._cached.popitem(last=False)
            if newest == cached.newest:
                return cached.pool
        added = read_outcomes(session, namespace, since=cached.newest)
        with self._lock:
            if cached.newest is not None and newest <= cached.newest:
                return cached.pool  # another request refreshed it meanwhile
            for outcome in added:
                cached.outcomes.setdefault(outcome.job_id, outcome)
            cached.pool = evidence_with(list(cached.outcomes.values()))
            cached.newest = newest
            return cached.pool

    def outcomes(self, session: Session, namespace: str) -> list[JobOutcome]:
        """The namespace's history (as of this call)."""
        self.pool(session, namespace)
        with self._lock:
            cached = self._cached.get(namespace)
            return [] if cached is None else list(cached.outcomes.values())
