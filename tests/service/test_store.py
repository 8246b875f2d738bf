"""Metadata and blobs on real files: schema versions, WAL, cascades, vectors, atomic writes, safe keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, text

from motif.service.blobs import LocalBlobStore, check_key
from motif.service.jobs import JobKind, JobQueue
from motif.service.migrations import head
from motif.service.store import (
    AudioRow,
    Database,
    EmbeddingRow,
    JobRow,
    all_embeddings,
    get_embedding,
    save_embedding,
)
from tests.service.conftest import add_audio


def test_a_fresh_database_is_created_at_the_latest_schema_in_wal_mode(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'motif.db'}")
    assert db.migrate() is None  # nothing before
    assert db.migrate() == head()  # idempotent: a restart finds it current
    db.check_schema()
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    db.dispose()


def test_embeddings_are_float32_per_model_and_pipeline_version(db: Database, rng: np.random.Generator) -> None:
    a, b = add_audio(db), add_audio(db)
    va, vb = rng.standard_normal(512).astype(np.float32), rng.standard_normal(512).astype(np.float32)
    with db.transaction() as session:
        save_embedding(session, a, "tiny", "1", va)
        save_embedding(session, b, "tiny", "1", vb)
        save_embedding(session, a, "other", "1", vb)
    with db.session() as session:
        row = get_embedding(session, a, "tiny", "1")
        assert row is not None and np.array_equal(row.array(), va) and row.dim == 512
        assert get_embedding(session, a, "tiny", "2") is None  # a new pipeline version recomputes
        ids, vectors = all_embeddings(session, "tiny", "1")
    assert sorted(ids) == sorted([a, b]) and vectors.shape == (2, 512) and vectors.dtype == np.float32


def test_deleting_an_upload_cascades_to_its_embedding_and_jobs(db: Database, queue: JobQueue) -> None:
    audio_id, other = add_audio(db), add_audio(db)
    with db.transaction() as session:
        save_embedding(session, audio_id, "tiny", "1", np.ones(512, dtype=np.float32))
        queue.enqueue(session, JobKind.GENERATION, audio_id)
        queue.enqueue(session, JobKind.GENERATION, other)
    with db.transaction() as session:
        session.delete(session.get(AudioRow, audio_id))
    with db.session() as session:
        assert session.scalars(select(EmbeddingRow)).all() == []
        assert [job.audio_id for job in session.scalars(select(JobRow))] == [other]


def test_blobs_are_written_atomically_and_listed_without_temp_files(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    blobs.put_bytes("generated/a.wav", b"abc")
    with blobs.staging("uploads") as staged:
        staged.write_bytes(b"upload")
        blobs.put_file("uploads/b.mp3", staged)
    with blobs.staging("uploads") as staged:
        staged.write_bytes(b"refused")  # never committed: removed on exit
    (tmp_path / "processed" / ".tmp-crashed.part").write_bytes(b"half")
    assert blobs.open("uploads/b.mp3").read() == b"upload"
    assert sorted(k for area in ("uploads", "processed", "generated") for k in blobs.keys(area)) == [
        "generated/a.wav", "uploads/b.mp3"]  # fmt: skip
    assert blobs.sweep_temp() == 1
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.wav", "b.mp3"]
    blobs.delete("generated/a.wav")
    blobs.delete("generated/a.wav")  # missing is fine
    assert not blobs.exists("generated/a.wav")


@pytest.mark.parametrize("key", ["uploads/../motif.db", "../x", "uploads/.hidden", "elsewhere/a", "uploads/a/b",
                                 "/etc/passwd", "uploads/"])  # fmt: skip
def test_unsafe_blob_keys_are_refused(key: str) -> None:
    with pytest.raises(ValueError):
        check_key(key)
