"""Alembic migrations on real databases: up, down and up again; the models match; refusals name the fix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from motif.service import migrations, vectors  # noqa: F401 - vectors registers the pgvector type
from motif.service.migrations import SchemaError, head
from motif.service.store import Base, Database
from tests.service.conftest import add_audio
from tests.services import create_database

TABLES = {"api_key", "audio", "embedding", "job", "worker"}


def test_revision_0003_adds_pgvector_on_postgresql_only(fresh: Database) -> None:
    fresh.migrate()
    columns = {column["name"] for column in inspect(fresh.engine).get_columns("embedding")}
    assert ("vec" in columns) == (fresh.engine.dialect.name == "postgresql")  # the test server has pgvector
    migrations.downgrade(fresh.engine, "0002")
    assert "vec" not in {column["name"] for column in inspect(fresh.engine).get_columns("embedding")}


@pytest.fixture
def fresh(database_url: str) -> Iterator[Database]:
    """An empty database at `database_url` (SQLite file; other engines where the suite runs them)."""
    db = Database(database_url)
    migrations.downgrade(db.engine, "base") if migrations.current(db.engine) else None
    yield db
    db.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new empty database: a SQLite file, or a database on the session's real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'motif.db'}"
    return create_database(request.getfixturevalue("postgres"), f"t_{uuid.uuid4().hex[:12]}")


def _tables(db: Database) -> set[str]:
    return set(inspect(db.engine).get_table_names()) - {"alembic_version"}


def test_up_down_and_up_again_keeps_the_schema_equal_to_the_models(fresh: Database) -> None:
    assert fresh.migrate() is None
    assert _tables(fresh) == TABLES
    migrations.downgrade(fresh.engine, "base")
    assert _tables(fresh) == set()
    fresh.migrate()
    assert _tables(fresh) == TABLES and migrations.current(fresh.engine) == head()
    with fresh.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": _not_pgvector})
        assert compare_metadata(context, Base.metadata) == []


def _not_pgvector(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Revision 0003's pgvector column and index exist on PostgreSQL only, outside the models (vectors.py)."""
    return name not in ("vec", "ix_embedding_vec_hnsw")


def test_a_downgrade_keeps_the_rows_the_older_schema_can_hold(fresh: Database) -> None:
    fresh.migrate()
    audio_id = add_audio(fresh)
    migrations.downgrade(fresh.engine, "0001")
    with fresh.engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM audio")).scalars().all() == [audio_id]
    fresh.migrate()
    with fresh.engine.connect() as conn:
        assert conn.execute(text("SELECT owner FROM audio WHERE id = :id"), {"id": audio_id}).scalar() is None


def test_an_unmigrated_database_is_refused_with_the_command_that_fixes_it(fresh: Database) -> None:
    with pytest.raises(SchemaError, match="motif db upgrade"):
        fresh.check_schema()
    fresh.migrate()
    migrations.downgrade(fresh.engine, "0001")
    with pytest.raises(SchemaError, match="at schema revision 0001.*motif db upgrade"):
        fresh.check_schema()


def test_a_database_from_a_newer_motif_is_refused(fresh: Database) -> None:
    fresh.migrate()
    with fresh.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    with pytest.raises(SchemaError, match="newer than this Motif"):
        fresh.check_schema()
    with pytest.raises(SchemaError, match="newer than this Motif"):
        fresh.migrate()


def test_a_database_from_before_alembic_is_stamped_and_upgraded(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    migrations.upgrade(db.engine, "0001")
    with db.engine.begin() as conn:  # what the pre-Alembic Motif left: its own version table, no alembic's
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("CREATE TABLE schema_version (version INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO schema_version (version) VALUES (1)"))
    audio_id = add_audio_row_0001(db)
    assert db.migrate() is None
    assert migrations.current(db.engine) == head()
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM audio")).scalars().all() == [audio_id]
    db.dispose()


def add_audio_row_0001(db: Database) -> str:
    with db.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO audio (id, filename, size_bytes, duration, sample_rate, channels, codec, container, analysis,"
            " upload_key, processed_key, created_at) VALUES ('a1', 's.wav', 1, 1.0, 32000, 1, 'pcm', 'wav', '{}',"
            " 'uploads/a1.wav', 'processed/a1.npy', '2026-01-01 00:00:00')"
        ))  # fmt: skip
    return "a1"
