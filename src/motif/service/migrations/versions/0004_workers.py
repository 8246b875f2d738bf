"""Live `motif worker` processes, each with the queues it consumes and when it was last seen.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("queues", sa.String(255), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("seen_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_worker_seen_at", "worker", ["seen_at"])


def downgrade() -> None:
    op.drop_index("ix_worker_seen_at", "worker")
    op.drop_table("worker")
