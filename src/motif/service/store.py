"""Metadata in SQL (SQLAlchemy 2.x): tables, connection set-up, and the few queries on audio.

The embedded default is SQLite in WAL mode under DATA_DIR; any SQLAlchemy URL works (PostgreSQL later).
Jobs live here as rows too; their state machine is `motif.service.jobs`. Schema changes are Alembic
revisions (`motif.service.migrations`): every change to the tables below gets a new revision there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
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
    select,
    true,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


def new_id() -> str:
    """A public id: 32 hex characters, never derived from anything a client sent."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Scope:
    """Whose rows a caller sees: one key's (`owner`), or everyone's (admin keys; no keys required).

    Every query on uploads and jobs takes one, so tenant isolation lives here and not in each route.
    """

    owner: str | None
    sees_all: bool

    def where(self, column: Any) -> ColumnElement[bool]:
        """A filter for `column` (an `owner` column) that keeps only what this scope may see."""
        return true() if self.sees_all else column == self.owner


EVERYONE = Scope(owner=None, sees_all=True)


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


class ApiKeyRow(Base):
    """A client's key. Only the SHA-256 of the secret is stored; `id` is what rows name as their owner."""

    __tablename__ = "api_key"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)  # hex SHA-256 of the secret
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Per-key quota overrides; None = the server's default (Settings.quota_*).
    rate_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_active_generations: Mapped[int | None] = mapped_column(Integer, nullable=True)
    daily_audio_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AudioRow(Base):
    """One accepted upload. `filename` is the client's name, kept as metadata only."""

    __tablename__ = "audio"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)  # api_key.id; None: no keys
    filename: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(Integer)
    duration: Mapped[float] = mapped_column(Float)  # seconds of decoded audio
    sample_rate: Mapped[int] = mapped_column(Integer)  # Hz of the upload's stream
    channels: Mapped[int] = mapped_column(Integer)
    codec: Mapped[str] = mapped_column(String(64))
    container: Mapped[str] = mapped_column(String(128))
    analysis: Mapped[dict[str, Any]] = mapped_column(JSON)
    upload_key: Mapped[str] = mapped_column(String(255))  # the original bytes
    processed_key: Mapped[str] = mapped_column(String(255))  # float32 at 32 kHz, (frames,) or (frames, 2), .npy
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
    owner: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)  # api_key.id; None: no keys
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..100
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    output_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    output_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # size of the result, for quotas
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # times a worker started it
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # The webhook of a generation with params.callback_url: "pending" from its creation until it is delivered
    # ("delivered") or given up ("failed"); `motif.service.webhooks` sends it once the job is final.
    webhook_state: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    webhook_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # next try, or lease end


class WorkerRow(Base):
    """A live `motif worker` process (distributed mode): it rewrites `seen_at` with its lease heartbeat, so
    API processes know which queues have a consumer on any broker (SQS has no broadcast to ask workers)."""

    __tablename__ = "worker"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # Celery hostname/pid
    queues: Mapped[str] = mapped_column(String(255))  # the queues it consumes, comma-separated
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


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

    def migrate(self) -> str | None:
        """Upgrade the schema to the newest revision; returns the revision found before (None: fresh)."""
        from motif.service.migrations import upgrade

        return upgrade(self.engine)

    def check_schema(self) -> None:
        """Raise SchemaError (naming the command that fixes it) unless the schema is the newest revision."""
        from motif.service.migrations import check

        check(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers never wait for the worker's writes. FULL: a commit is on disk before we answer.
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=10000"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


# ---------------------------------------------------------------- queries on audio and embeddings


def get_audio(session: Session, scope: Scope, audio_id: str) -> AudioRow | None:
    """The upload if `scope` may see it (another tenant's id is as absent as an unknown one)."""
    return session.scalar(select(AudioRow).where(AudioRow.id == audio_id, scope.where(AudioRow.owner)))


def count_audio(session: Session, scope: Scope) -> int:
    return session.scalar(select(func.count()).select_from(AudioRow).where(scope.where(AudioRow.owner))) or 0


def list_audio(session: Session, scope: Scope, limit: int, offset: int) -> list[AudioRow]:
    """Newest first."""
    query = (select(AudioRow).where(scope.where(AudioRow.owner))
             .order_by(AudioRow.created_at.desc(), AudioRow.id).limit(limit).offset(offset))  # fmt: skip
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


def all_embeddings(
    session: Session, model: str, pipeline_version: str, scope: Scope = EVERYONE
) -> tuple[list[str], np.ndarray]:
    """Every vector of one model that `scope` may see: (audio ids, (n, dim) float32)."""
    query = (
        select(EmbeddingRow.audio_id, EmbeddingRow.vector)
        .join(AudioRow, AudioRow.id == EmbeddingRow.audio_id)
        .where(EmbeddingRow.model == model, EmbeddingRow.pipeline_version == pipeline_version,
               scope.where(AudioRow.owner))
    )  # fmt: skip
    rows = session.execute(query).all()
    if not rows:
        return [], np.zeros((0, 0), dtype=np.float32)
    return [r[0] for r in rows], np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows])

