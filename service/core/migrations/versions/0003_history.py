"""History: namespaces and use_history on jobs and recommendations, and the history table that
recommendations and new jobs learn from (finished jobs of this server, and imported ones).

Jobs completed before this revision are copied into the history from their results rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence
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
    for table in ("jobs", "recommendations"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("namespace", sa.String(64), nullable=False,
                                       server_default="default"))
            batch.add_column(sa.Column("use_history", sa.Boolean(), nullable=False,
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
        "job_id", "workload", "model_family", "task_type", "num_parameters", "task", "metric",
        "direction", "per_optimizer", "trials_used", "created_at")),
        sa.column("task", JSON), sa.column("per_optimizer", JSON))
    jobs = sa.table("jobs", sa.column("id"), sa.column("status"), sa.column("finished_at"))
    history = sa.table("history", *(sa.column(c) for c in (
        "job_id", "namespace", "model_family", "task_type", "num_parameters", "origin",
        "finished_at", "created_at")), sa.column("outcome", JSON))
    rows = connection.execute(
        sa.select(results, jobs.c.finished_at).join(jobs, jobs.c.id == results.c.job_id)
        .where(jobs.c.status == "completed")).mappings().all()
    for row in rows:
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
            "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
        }
        connection.execute(sa.insert(history).values(
            job_id=row["job_id"], namespace="default", model_family=row["model_family"],
            task_type=row["task_type"], num_parameters=row["num_parameters"], origin="local",
            outcome=outcome, finished_at=row["finished_at"], created_at=row["created_at"]))


def downgrade() -> None:
    op.drop_table("history")
    for table in ("jobs", "recommendations"):
        op.drop_index(f"ix_{table}_namespace", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("use_history")
            batch.drop_column("namespace")
