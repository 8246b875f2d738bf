"""API keys, an owner on every upload and job, and result sizes (for storage quotas).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_key",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("is_admin", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("revoked_at", sa.DateTime, nullable=True),
        sa.Column("rate_per_minute", sa.Integer, nullable=True),
        sa.Column("max_active_generations", sa.Integer, nullable=True),
        sa.Column("daily_audio_seconds", sa.Float, nullable=True),
        sa.Column("max_stored_bytes", sa.BigInteger, nullable=True),
    )
    with op.batch_alter_table("audio") as batch:
        batch.add_column(sa.Column("owner", sa.String(32), nullable=True))
        batch.create_index("ix_audio_owner", ["owner"])
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("owner", sa.String(32), nullable=True))
        batch.add_column(sa.Column("output_bytes", sa.BigInteger, nullable=True))
        batch.create_index("ix_job_owner", ["owner"])


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_index("ix_job_owner")
        batch.drop_column("output_bytes")
        batch.drop_column("owner")
    with op.batch_alter_table("audio") as batch:
        batch.drop_index("ix_audio_owner")
        batch.drop_column("owner")
    op.drop_table("api_key")
