"""Trial leases for client-evaluated (ask/tell) jobs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "trial_leases",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.BigInteger(), nullable=False),
        sa.Column("client_id", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("outcome", JSON, nullable=True),
        sa.Column("lease_expires_at", UTC_DATETIME, nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.CheckConstraint(
            "state IN ('open', 'completed', 'pruned', 'failed', 'expired')",
            name="ck_trial_leases_state",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_trial_leases_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_trial_leases"),
        sa.UniqueConstraint("job_id", "trial_number", name="uq_trial_leases_job_id_trial_number"),
    )
    op.create_index("ix_trial_leases_state_expiry", "trial_leases", ["state", "lease_expires_at"])
    # One open trial per client and job: asking again returns it.
    op.create_index(
        "uq_trial_leases_open_client", "trial_leases", ["job_id", "client_id"], unique=True,
        sqlite_where=sa.text("state = 'open'"), postgresql_where=sa.text("state = 'open'"),
    )


def downgrade() -> None:
    op.drop_table("trial_leases")
