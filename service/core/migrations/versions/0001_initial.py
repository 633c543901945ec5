"""Initial schema: recommendations, jobs, results.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "recommendations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("task", JSON, nullable=False),
        sa.Column("top_k", sa.Integer(), nullable=False),
        sa.Column("candidates", JSON, nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_recommendations"),
    )
    op.create_index("ix_recommendations_created_at", "recommendations", ["created_at"])

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("workload", sa.String(64), nullable=True),
        sa.Column("task", JSON, nullable=False),
        sa.Column("n_trials", sa.Integer(), nullable=False),
        sa.Column("timeout_s", sa.Double(), nullable=True),
        sa.Column("optimizers", JSON, nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("pruner", sa.String(16), nullable=False),
        sa.Column("study_name", sa.String(200), nullable=False),
        sa.Column("trials_claimed", sa.Integer(), nullable=False),
        sa.Column("max_retries", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("prior", JSON, nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("started_at", UTC_DATETIME, nullable=True),
        sa.Column("finished_at", UTC_DATETIME, nullable=True),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'completed', 'failed', 'cancelled')",
            name="ck_jobs_status",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("study_name", name="uq_jobs_study_name"),
    )
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])

    op.create_table(
        "results",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("workload", sa.String(64), nullable=True),
        sa.Column("model_family", sa.String(32), nullable=False),
        sa.Column("task_type", sa.String(32), nullable=False),
        sa.Column("num_parameters", sa.BigInteger(), nullable=False),
        sa.Column("task", JSON, nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("best_value", sa.Double(), nullable=True),
        sa.Column("best_optimizer", sa.String(64), nullable=True),
        sa.Column("best_hyperparameters", JSON, nullable=False),
        sa.Column("per_optimizer", JSON, nullable=False),
        sa.Column("trials_used", sa.Integer(), nullable=False),
        sa.Column("prior_top", sa.String(64), nullable=True),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.CheckConstraint(
            "direction IN ('minimize', 'maximize')", name="ck_results_direction"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_results_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_results"),
        sa.UniqueConstraint("job_id", name="uq_results_job_id"),
    )
    for column in (
        "workload", "model_family", "task_type", "num_parameters", "best_optimizer", "created_at"
    ):
        op.create_index(f"ix_results_{column}", "results", [column])


def downgrade() -> None:
    op.drop_table("results")
    op.drop_table("jobs")
    op.drop_table("recommendations")
