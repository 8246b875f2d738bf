"""Similar-track search on PostgreSQL with pgvector (a real server): the HNSW index against exact search."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import insert, inspect, text

from motif.service import migrations, vectors
from motif.service.store import AudioRow, Database, EmbeddingRow, Scope
from tests.services import Service, create_database

N_VECTORS = 10_000
N_QUERIES = 100
K = 10
MODEL, VERSION = "tiny", "1"


@pytest.fixture(scope="module")
def filled(postgres: Service) -> Iterator[tuple[Database, np.ndarray, list[str]]]:
    """10,000 unit vectors (random directions around 200 centres, like tracks of a few styles), in two tenants."""
    db = Database(create_database(postgres, f"vec_{uuid.uuid4().hex[:8]}"))
    db.migrate()
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((200, vectors.DIM)).astype(np.float32)
    data = centres[rng.integers(0, 200, N_VECTORS)] + 0.6 * rng.standard_normal((N_VECTORS, vectors.DIM))
    data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"{i:032x}" for i in range(N_VECTORS)]
    _insert(db, ids, data)
    migrations.downgrade(db.engine, "0002")  # then 0003 backfills the rows that existed before it
    db.migrate()
    vectors._known.clear()
    yield db, data, ids
    db.dispose()


def _insert(db: Database, ids: list[str], data: np.ndarray) -> None:
    audio = [dict(id=i, owner="a" if n % 2 else "b", filename="x.wav", size_bytes=1, duration=1.0, sample_rate=32_000,
                  channels=1, codec="pcm", container="wav", analysis={}, upload_key=f"uploads/{i}.wav",
                  processed_key=f"processed/{i}.npy") for n, i in enumerate(ids)]  # fmt: skip
    embeddings = [dict(audio_id=i, model=MODEL, pipeline_version=VERSION, dim=vectors.DIM,
                       vector=v.astype("<f4").tobytes()) for i, v in zip(ids, data, strict=True)]  # fmt: skip
    with db.transaction() as session:
        session.execute(insert(AudioRow), audio)
        session.execute(insert(EmbeddingRow), embeddings)


def test_revision_0003_adds_the_vector_column_and_hnsw_index(filled: tuple[Database, np.ndarray, list[str]]) -> None:
    db, _, _ = filled
    assert vectors.indexed(db)
    indexes = {index["name"] for index in inspect(db.engine).get_indexes("embedding")}
    assert "ix_embedding_vec_hnsw" in indexes
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM embedding WHERE vec IS NOT NULL")).scalar() == N_VECTORS


def test_hnsw_recall_at_10_is_at_least_095_against_exact_search(filled: tuple[Database, np.ndarray, list[str]]) -> None:
    db, data, ids = filled
    everyone = Scope(owner=None, sees_all=True)
    rng = np.random.default_rng(8)
    hits = 0
    for q in rng.choice(N_VECTORS, N_QUERIES, replace=False):
        exact = {ids[i] for i in np.argsort(-(data @ data[q]))[:K]}
        with db.transaction() as session:
            found = vectors.nearest(session, everyone, MODEL, VERSION, data[q], K)
        assert len(found) == K
        hits += len(exact & {audio_id for audio_id, _ in found})
    recall = hits / (N_QUERIES * K)
    assert recall >= 0.95, recall


def test_indexed_search_keeps_the_tenant_filter(filled: tuple[Database, np.ndarray, list[str]]) -> None:
    db, data, ids = filled
    owners = {i: ("a" if n % 2 else "b") for n, i in enumerate(ids)}
    with db.transaction() as session:
        found = vectors.nearest(session, Scope(owner="a", sees_all=False), MODEL, VERSION, data[0], K, exclude=ids[1])
    assert len(found) == K and all(owners[audio_id] == "a" for audio_id, _ in found)
    assert ids[1] not in {audio_id for audio_id, _ in found}
