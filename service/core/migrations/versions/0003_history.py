"""History: namespaces and use_history on jobs and recommendations, and the history table that
recommendations and new jobs learn from (finished jobs of this server, and imported ones).

Jobs completed before this revision are copied into the history from their results rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Plain ADD COLUMN, never a batch (copy-and-move) on SQLite: dropping the old jobs table
    # there would cascade to the rows that reference it (results, trial leases).
    for table in ("jobs", "recommendations"):
        op.add_column(table, sa.Column("namespace", sa.String(64), nullable=False,
                                       server_default="default"))
        op.add_column(table, sa.Column("use_history", sa.Boolean(), nullable=False,
                                       server_default=sa.true()))
        op.create_index(f"ix_{table}_namespace", table, ["namespace"])
    op.create_table(
        "history",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("model_family", sa.String(32), nullable=False),
        sa.Column("task_type", sa.String(32), nullable=False),
        sa.Column("num_parameters", sa.BigInteger(), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("outcome", JSON, nullable=False),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.CheckConstraint("origin IN ('local', 'imported')", name="ck_history_origin"),
        sa.PrimaryKeyConstraint("job_id", name="pk_history"),
    )
    op.create_index("ix_history_namespace_created_at", "history", ["namespace", "created_at"])
    op.create_index("ix_history_model_family", "history", ["model_family"])
    _copy_finished_jobs()


def _copy_finished_jobs() -> None:
    """History rows for the jobs completed before this revision, from their results rows (the
    shape ``tuner.evidence.history.JobOutcome.to_json`` writes)."""
    connection = op.get_bind()
    results = sa.table("results", *(sa.column(c) for c in (
        "job_id", "workload", "model_family", "task_type", "num_parameters", "metric",
        "direction", "trials_used")), sa.column("created_at", UTC_DATETIME),
        sa.column("task", JSON), sa.column("per_optimizer", JSON))
    jobs = sa.table("jobs", sa.column("id"), sa.column("status"),
                    sa.column("finished_at", UTC_DATETIME))
    history = sa.table("history", *(sa.column(c) for c in (
        "job_id", "namespace", "model_family", "task_type", "num_parameters", "origin")),
        sa.column("outcome", JSON), sa.column("finished_at", UTC_DATETIME),
        sa.column("created_at", UTC_DATETIME))
    sqlite = connection.dialect.name == "sqlite"
    rows = connection.execute(
        sa.select(results, jobs.c.finished_at).join(jobs, jobs.c.id == results.c.job_id)
        .where(jobs.c.status == "completed")).mappings().all()
    for row in rows:
        finished = _utc(row["finished_at"])
        per: dict[str, Any] = row["per_optimizer"] or {}
        outcome = {
            "job_id": row["job_id"], "namespace": "default", "task": row["task"],
            "workload": row["workload"], "metric": row["metric"],
            "direction": row["direction"], "trials_used": row["trials_used"],
            "per_optimizer": {
                name: {"completed": entry.get("completed", 0),
                       "best_value": entry.get("best_value"),
                       "best_hyperparameters": entry.get("best_hyperparameters") or {},
                       "best_schedule": None}
                for name, entry in per.items()},
            "best_schedule": None,
            "finished_at": finished.isoformat() if finished else None,
        }
        connection.execute(sa.insert(history).values(
            job_id=row["job_id"], namespace="default", model_family=row["model_family"],
            task_type=row["task_type"], num_parameters=row["num_parameters"], origin="local",
            outcome=outcome, finished_at=_stored(finished, sqlite),
            created_at=_stored(_utc(row["created_at"]), sqlite)))


def _utc(moment: Any) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite keeps naive UTC, as text)."""
    if moment is None:
        return None
    parsed: datetime = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _stored(moment: datetime | None, sqlite: bool) -> datetime | None:
    """As the service's UTCDateTime stores it: naive UTC on SQLite, aware elsewhere."""
    if moment is None or not sqlite:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def downgrade() -> None:
    op.drop_table("history")
    for table in ("jobs", "recommendations"):
        op.drop_index(f"ix_{table}_namespace", table_name=table)
        op.drop_column(table, "use_history")  # SQLite >= 3.35 drops a column in place
        op.drop_column(table, "namespace")
