"""Metadata in SQL (SQLAlchemy 2.x): tables, connection set-up, schema versions, and the few queries on audio.

The embedded default is SQLite in WAL mode under DATA_DIR; any SQLAlchemy URL works (PostgreSQL later).
Jobs live here as rows too; their state machine is `motif.service.jobs`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


def new_id() -> str:
    """A public id: 32 hex characters, never derived from anything a client sent."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stored naive in UTC (SQLite has no time zones), returned aware so the API says `+00:00`."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class AudioRow(Base):
    """One accepted upload. `filename` is the client's name, kept as metadata only."""

    __tablename__ = "audio"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    filename: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(Integer)
    duration: Mapped[float] = mapped_column(Float)  # seconds of decoded audio
    sample_rate: Mapped[int] = mapped_column(Integer)  # Hz of the upload's stream
    channels: Mapped[int] = mapped_column(Integer)
    codec: Mapped[str] = mapped_column(String(64))
    container: Mapped[str] = mapped_column(String(128))
    analysis: Mapped[dict[str, Any]] = mapped_column(JSON)
    upload_key: Mapped[str] = mapped_column(String(255))  # the original bytes
    processed_key: Mapped[str] = mapped_column(String(255))  # mono float32 at 32 kHz, .npy
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class EmbeddingRow(Base):
    """A CLAP vector of one upload, as float32 bytes, tagged with what made it."""

    __tablename__ = "embedding"

    audio_id: Mapped[str] = mapped_column(ForeignKey("audio.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    pipeline_version: Mapped[str] = mapped_column(String(32))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # (dim,) little-endian float32
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def array(self) -> np.ndarray:
        """(dim,) float32."""
        return np.frombuffer(self.vector, dtype="<f4").copy()


class JobRow(Base):
    """A durable job (embedding or generation). A generation's public id is its job id."""

    __tablename__ = "job"
    __table_args__ = (Index("ix_job_kind_status_seq", "kind", "status", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # queue order
    id: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    audio_id: Mapped[str] = mapped_column(ForeignKey("audio.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..100
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    output_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # times a worker started it
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


# Schema versions. A fresh database gets today's tables and the latest number; an older one runs the
# steps after its number, in order. Append a step for every change to the tables above (never edit one).
MIGRATIONS: list[Callable[[Connection], None]] = [
    lambda conn: Base.metadata.create_all(conn),  # 1: audio, embedding, job
]
SCHEMA_VERSION = len(MIGRATIONS)


class Database:
    """The SQL engine and its sessions. One per process; created in the app's lifespan."""

    def __init__(self, url: str) -> None:
        self.url = url
        is_sqlite = url.startswith("sqlite")
        self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False} if is_sqlite else {})
        if is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on any exception."""
        with self._sessions() as session, session.begin():
            yield session

    def migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION; returns the version found before (0: a fresh database)."""
        with self.engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
            found = conn.execute(text("SELECT max(version) FROM schema_version")).scalar() or 0
            if found > SCHEMA_VERSION:
                raise RuntimeError(f"the database is at schema {found}, newer than this Motif ({SCHEMA_VERSION})")
            if found == 0 and not inspect(conn).has_table("audio"):
                Base.metadata.create_all(conn)
            else:
                for step in MIGRATIONS[found:]:
                    step(conn)
            if found != SCHEMA_VERSION:
                conn.execute(text("DELETE FROM schema_version"))
                conn.execute(text("INSERT INTO schema_version (version) VALUES (:v)"), {"v": SCHEMA_VERSION})
        return found

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers never wait for the worker's writes. FULL: a commit is on disk before we answer.
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=10000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


# ---------------------------------------------------------------- queries on audio and embeddings


def count_audio(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(AudioRow)) or 0


def list_audio(session: Session, limit: int, offset: int) -> list[AudioRow]:
    """Newest first."""
    query = select(AudioRow).order_by(AudioRow.created_at.desc(), AudioRow.id).limit(limit).offset(offset)
    return list(session.scalars(query))


def get_embedding(session: Session, audio_id: str, model: str, pipeline_version: str) -> EmbeddingRow | None:
    row = session.get(EmbeddingRow, (audio_id, model))
    return row if row is not None and row.pipeline_version == pipeline_version else None


def save_embedding(session: Session, audio_id: str, model: str, pipeline_version: str, vector: np.ndarray) -> None:
    """Insert or replace the vector of (audio_id, model)."""
    data = np.ascontiguousarray(vector, dtype="<f4").tobytes()
    row = session.get(EmbeddingRow, (audio_id, model))
    if row is None:
        session.add(EmbeddingRow(audio_id=audio_id, model=model, pipeline_version=pipeline_version,
                                 dim=int(vector.size), vector=data))  # fmt: skip
    else:
        row.pipeline_version, row.dim, row.vector, row.created_at = pipeline_version, int(vector.size), data, utcnow()


def all_embeddings(session: Session, model: str, pipeline_version: str) -> tuple[list[str], np.ndarray]:
    """Every upload's vector for one model: (ids, (n, dim) float32)."""
    query = select(EmbeddingRow.audio_id, EmbeddingRow.vector).where(
        EmbeddingRow.model == model, EmbeddingRow.pipeline_version == pipeline_version
    )
    rows = session.execute(query).all()
    if not rows:
        return [], np.zeros((0, 0), dtype=np.float32)
    return [r[0] for r in rows], np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows])
