"""Webhook deliveries as job columns, so a pending one survives a crash and any API process can send it.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("webhook_state", sa.String(16), nullable=True))
        batch.add_column(sa.Column("webhook_attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("webhook_due_at", sa.DateTime, nullable=True))
        batch.create_index("ix_job_webhook_state", ["webhook_state"])


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_index("ix_job_webhook_state")
        batch.drop_column("webhook_due_at")
        batch.drop_column("webhook_attempts")
        batch.drop_column("webhook_state")
