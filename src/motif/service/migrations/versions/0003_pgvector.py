"""PostgreSQL with pgvector: embeddings also in a `vector(512)` column with an HNSW index (cosine).

Acts only on PostgreSQL where the `vector` extension is available; elsewhere (SQLite, PostgreSQL without
pgvector) it does nothing and similar-track search stays exact (`motif.service.vectors`).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DIM = 512  # CLAP's joint space; vectors of another size stay in `vector` bytes only (exact search)
BACKFILL_BATCH = 1000


def _pgvector_available() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    return bool(bind.execute(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).scalar())


def upgrade() -> None:
    if not _pgvector_available():
        return
    bind = op.get_bind()
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(f"ALTER TABLE embedding ADD COLUMN IF NOT EXISTS vec vector({DIM})")
    rows = bind.execute(sa.text("SELECT audio_id, model, vector FROM embedding WHERE dim = :dim"), {"dim": DIM})
    update = sa.text("UPDATE embedding SET vec = CAST(:vec AS vector) WHERE audio_id = :audio_id AND model = :model")
    while batch := rows.fetchmany(BACKFILL_BATCH):
        bind.execute(update, [{"audio_id": a, "model": m, "vec": _literal(v)} for a, m, v in batch])
    # m=16, ef_construction=64 (pgvector's defaults): recall@10 >= 0.95 at ef_search 100 in tests/service.
    op.execute("CREATE INDEX IF NOT EXISTS ix_embedding_vec_hnsw ON embedding USING hnsw (vec vector_cosine_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS ix_embedding_vec_hnsw")
    op.execute("ALTER TABLE embedding DROP COLUMN IF EXISTS vec")  # the extension stays: others may use it


def _literal(data: bytes) -> str:
    return "[" + ",".join(repr(float(x)) for x in np.frombuffer(data, dtype="<f4")) + "]"
