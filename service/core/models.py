"""The service's tables: recommendations, jobs and results (Optuna's tables are Optuna's own).

Identifiers are 32-character UUID4 hex strings; timestamps are timezone-aware UTC datetimes on
both SQLite and PostgreSQL; JSON columns are JSONB on PostgreSQL. The schema itself is created
by the hand-written migrations in ``service/core/migrations/versions`` (keep them in step).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column

from service.core.db import Base
from tuner.evidence.history import DEFAULT_NAMESPACE

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")

ID_LENGTH = 32
NAME_LENGTH = 64


def new_id() -> str:
    """A fresh identifier: a UUID4 as 32 lowercase hex digits."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime everywhere (SQLite stores naive UTC, PostgreSQL timestamptz).

    Naive datetimes are rejected on the way in, so local time never sneaks into the database.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: pass a timezone-aware datetime (UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


JOB_STATUSES: tuple[str, ...] = tuple(status.value for status in JobStatus)
DIRECTIONS: tuple[str, ...] = ("minimize", "maximize")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Recommendation(Base):
    """A stored answer of ``POST /v1/recommendations``."""

    __tablename__ = "recommendations"

    id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True, default=new_id)
    task: Mapped[dict[str, Any]] = mapped_column(JSONType)
    top_k: Mapped[int] = mapped_column(sa.Integer)
    candidates: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    namespace: Mapped[str] = mapped_column(sa.String(NAME_LENGTH), default=DEFAULT_NAMESPACE,
                                           server_default=DEFAULT_NAMESPACE, index=True)
    use_history: Mapped[bool] = mapped_column(sa.Boolean, default=True,
                                              server_default=sa.true())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Job(Base):
    """A tuning job: one Optuna study (``study_name``) plus its lifecycle."""

    __tablename__ = "jobs"
    __table_args__ = (sa.CheckConstraint(_in("status", JOB_STATUSES), name="status"),)

    id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(
        sa.String(16), default=JobStatus.QUEUED.value, index=True
    )
    workload: Mapped[str | None] = mapped_column(sa.String(NAME_LENGTH))
    task: Mapped[dict[str, Any]] = mapped_column(JSONType)
    n_trials: Mapped[int] = mapped_column(sa.Integer)
    timeout_s: Mapped[float | None] = mapped_column(sa.Double)
    optimizers: Mapped[list[str] | None] = mapped_column(JSONType)
    seed: Mapped[int | None] = mapped_column(sa.BigInteger)
    pruner: Mapped[str] = mapped_column(sa.String(16), default="median")
    study_name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    trials_claimed: Mapped[int] = mapped_column(sa.Integer, default=0)
    max_retries: Mapped[int] = mapped_column(sa.Integer, default=2)
    error: Mapped[str | None] = mapped_column(sa.Text)
    prior: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    namespace: Mapped[str] = mapped_column(sa.String(NAME_LENGTH), default=DEFAULT_NAMESPACE,
                                           server_default=DEFAULT_NAMESPACE, index=True)
    use_history: Mapped[bool] = mapped_column(sa.Boolean, default=True,
                                              server_default=sa.true())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Result(Base):
    """The outcome of a finished job, denormalized for search (one row per job)."""

    __tablename__ = "results"
    __table_args__ = (sa.CheckConstraint(_in("direction", DIRECTIONS), name="direction"),)

    id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(
        sa.String(ID_LENGTH), sa.ForeignKey("jobs.id", ondelete="CASCADE"), unique=True
    )
    workload: Mapped[str | None] = mapped_column(sa.String(NAME_LENGTH), index=True)
    model_family: Mapped[str] = mapped_column(sa.String(32), index=True)
    task_type: Mapped[str] = mapped_column(sa.String(32), index=True)
    num_parameters: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    task: Mapped[dict[str, Any]] = mapped_column(JSONType)
    metric: Mapped[str] = mapped_column(sa.String(NAME_LENGTH))
    direction: Mapped[str] = mapped_column(sa.String(8))
    best_value: Mapped[float | None] = mapped_column(sa.Double)
    best_optimizer: Mapped[str | None] = mapped_column(sa.String(NAME_LENGTH), index=True)
    best_hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    per_optimizer: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    trials_used: Mapped[int] = mapped_column(sa.Integer, default=0)
    prior_top: Mapped[str | None] = mapped_column(sa.String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


HISTORY_ORIGINS: tuple[str, ...] = ("local", "imported")


class HistoryEntry(Base):
    """A finished job as recommendations and new jobs learn from it: one of this server's
    completed jobs (written when it completes) or one imported from another; ``outcome`` is
    ``tuner.evidence.history.JobOutcome.to_json()``. Failed and cancelled jobs have none."""

    __tablename__ = "history"
    __table_args__ = (
        sa.CheckConstraint(_in("origin", HISTORY_ORIGINS), name="origin"),
        sa.Index("ix_history_namespace_created_at", "namespace", "created_at"),
    )

    job_id: Mapped[str] = mapped_column(sa.String(NAME_LENGTH), primary_key=True)
    namespace: Mapped[str] = mapped_column(sa.String(NAME_LENGTH))
    model_family: Mapped[str] = mapped_column(sa.String(32), index=True)
    task_type: Mapped[str] = mapped_column(sa.String(32))
    num_parameters: Mapped[int] = mapped_column(sa.BigInteger)
    origin: Mapped[str] = mapped_column(sa.String(16), default="local")
    outcome: Mapped[dict[str, Any]] = mapped_column(JSONType)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


LEASE_STATES: tuple[str, ...] = ("open", "completed", "pruned", "failed", "expired")


class TrialLease(Base):
    """A client-evaluated trial of a ``workload: null`` job, held by one client under a lease."""

    __tablename__ = "trial_leases"
    __table_args__ = (
        sa.CheckConstraint(_in("state", LEASE_STATES), name="state"),
        sa.UniqueConstraint("job_id", "trial_number"),
        sa.Index("ix_trial_leases_state_expiry", "state", "lease_expires_at"),
        sa.Index("uq_trial_leases_open_client", "job_id", "client_id", unique=True,
                 sqlite_where=sa.text("state = 'open'"),
                 postgresql_where=sa.text("state = 'open'")),
    )

    id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(
        sa.String(ID_LENGTH), sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    trial_number: Mapped[int] = mapped_column(sa.Integer)
    trial_id: Mapped[int] = mapped_column(sa.BigInteger)
    client_id: Mapped[str] = mapped_column(sa.String(128))
    state: Mapped[str] = mapped_column(sa.String(16), default="open")
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    lease_expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
