"""Uploads, their embeddings and durable jobs (the schema before API keys).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audio",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("duration", sa.Float, nullable=False),
        sa.Column("sample_rate", sa.Integer, nullable=False),
        sa.Column("channels", sa.Integer, nullable=False),
        sa.Column("codec", sa.String(64), nullable=False),
        sa.Column("container", sa.String(128), nullable=False),
        sa.Column("analysis", sa.JSON, nullable=False),
        sa.Column("upload_key", sa.String(255), nullable=False),
        sa.Column("processed_key", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_audio_created_at", "audio", ["created_at"])
    op.create_table(
        "embedding",
        sa.Column("audio_id", sa.String(32), sa.ForeignKey("audio.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("model", sa.String(255), primary_key=True),
        sa.Column("pipeline_version", sa.String(32), nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "job",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("audio_id", sa.String(32), sa.ForeignKey("audio.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("output_key", sa.String(255), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("error_code", sa.String(32), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_job_id", "job", ["id"], unique=True)
    op.create_index("ix_job_audio_id", "job", ["audio_id"])
    op.create_index("ix_job_kind_status_seq", "job", ["kind", "status", "seq"])


def downgrade() -> None:
    op.drop_table("job")
    op.drop_table("embedding")
    op.drop_table("audio")
