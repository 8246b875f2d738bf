"""What the routes ask of the service: uploads, their embeddings and generations, deletion, search.

Plain functions over `Services`; they run in worker threads (FastAPI's pool), never on the event loop.
Each takes the caller's `Scope`: another tenant's upload or generation is as absent as an unknown one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select

from motif.service import vectors as vector_index
from motif.service.jobs import JobKind, JobStatus
from motif.service.runtime import Services
from motif.service.store import (
    AudioRow,
    EmbeddingRow,
    JobRow,
    Scope,
    all_embeddings,
    count_audio,
    get_embedding,
    list_audio,
    utcnow,
)
from motif.service.store import get_audio as get_audio_row

RETRY_FAILED_AFTER = 30.0  # seconds before a failed embedding is tried again on request


@dataclass(frozen=True)
class EmbeddingLookup:
    embedding: EmbeddingRow | None  # the vector of the configured model, when ready
    job: JobRow | None  # else the job making it (queued, processing, or failed with a reason)


@dataclass(frozen=True)
class Match:
    audio: AudioRow
    score: float  # cosine similarity, -1..1


def get_audio(services: Services, scope: Scope, audio_id: str) -> AudioRow | None:
    with services.db.session() as session:
        return get_audio_row(session, scope, audio_id)


def audio_page(services: Services, scope: Scope, limit: int, offset: int) -> tuple[list[AudioRow], int]:
    with services.db.session() as session:
        return list_audio(session, scope, limit, offset), count_audio(session, scope)


def embedding_statuses(services: Services, audio_ids: list[str]) -> dict[str, str]:
    """audio id -> status of its latest embedding job ("completed" when the vector exists)."""
    with services.db.session() as session:
        query = (select(JobRow.audio_id, JobRow.status).where(JobRow.kind == JobKind.EMBEDDING.value,
                 JobRow.audio_id.in_(audio_ids)).order_by(JobRow.seq))  # fmt: skip
        return {audio_id: status for audio_id, status in session.execute(query)}


def lookup_embedding(services: Services, scope: Scope, audio_id: str, retry_failed: bool) -> EmbeddingLookup | None:
    """The upload's vector, or the job making it: queued if there is none; with `retry_failed`, a job that
    failed more than RETRY_FAILED_AFTER seconds ago is re-queued (the model may be back). None: no upload.
    """
    model, version = services.settings.embedding_model, services.engine.pipeline_version
    with services.db.transaction() as session:
        if get_audio_row(session, scope, audio_id) is None:
            return None
        row = get_embedding(session, audio_id, model, version)
        if row is not None:
            return EmbeddingLookup(row, None)
        job = session.scalar(select(JobRow).where(JobRow.kind == JobKind.EMBEDDING.value, JobRow.audio_id == audio_id)
                             .order_by(JobRow.seq.desc()).limit(1))  # fmt: skip
        stale = job is None or job.status == JobStatus.COMPLETED.value  # none yet, or it made another model's
        if job is None or stale or (retry_failed and _failed_long_ago(job)):
            job = services.queue.ensure_embedding(session, audio_id)
    if job.status == JobStatus.QUEUED.value:
        services.workers.wake(JobKind.EMBEDDING, job.id)
    return EmbeddingLookup(None, job)


def _failed_long_ago(job: JobRow) -> bool:
    """Failed, and not just now: a client polling a missing model sees the reason, not endless retries."""
    cutoff = utcnow() - timedelta(seconds=RETRY_FAILED_AFTER)
    return job.status == JobStatus.FAILED.value and job.finished_at is not None and job.finished_at < cutoff


def delete_audio(services: Services, scope: Scope, audio_id: str) -> bool:
    """Remove the upload's row (its embeddings and generations cascade), then its files. False if unknown."""
    with services.db.transaction() as session:
        audio = get_audio_row(session, scope, audio_id)
        if audio is None:
            return False
        jobs = list(session.scalars(select(JobRow).where(JobRow.audio_id == audio_id)))
        keys = [audio.upload_key, audio.processed_key, *(job.output_key for job in jobs if job.output_key)]
        session.execute(delete(AudioRow).where(AudioRow.id == audio_id))
    for job in jobs:
        if job.status == JobStatus.PROCESSING.value:
            services.workers.cancel(job.id)  # its result, if it still lands, finds no row and is removed
    for key in keys:
        services.blobs.delete(key)
    return True


def create_generation(services: Services, scope: Scope, audio_id: str, params: dict[str, Any]) -> JobRow | None:
    """Queue a generation of the upload, owned by the caller; None when the upload does not exist (for it)."""
    with services.db.transaction() as session:
        if get_audio_row(session, scope, audio_id) is None:
            return None
        job = services.queue.enqueue(session, JobKind.GENERATION, audio_id, params, owner=scope.owner)
    services.workers.wake(JobKind.GENERATION, job.id)
    return job


def get_generation(services: Services, scope: Scope, generation_id: str) -> JobRow | None:
    with services.db.session() as session:
        return session.scalar(select(JobRow).where(JobRow.id == generation_id, scope.where(JobRow.owner),
                                                   JobRow.kind == JobKind.GENERATION.value))  # fmt: skip


def generation_page(
    services: Services, scope: Scope, audio_id: str | None, status: JobStatus | None, limit: int, offset: int
) -> tuple[list[JobRow], int]:
    """Newest first."""
    where = [JobRow.kind == JobKind.GENERATION.value, scope.where(JobRow.owner)]
    if audio_id is not None:
        where.append(JobRow.audio_id == audio_id)
    if status is not None:
        where.append(JobRow.status == status.value)
    with services.db.session() as session:
        total = session.scalar(select(func.count()).select_from(JobRow).where(*where)) or 0
        rows = session.scalars(select(JobRow).where(*where).order_by(JobRow.seq.desc()).limit(limit).offset(offset))
        return list(rows), total


def nearest(
    services: Services, scope: Scope, query: np.ndarray, k: int, exclude: str | None = None
) -> list[Match]:
    """The k uploads `scope` may see whose vectors are closest to `query` ((dim,) unit vector), best first.

    PostgreSQL with pgvector: the HNSW index (approximate, recall@10 >= 0.95). Elsewhere brute force over
    every stored vector of the configured model: linear, ~0.1 s per 1,500 uploads (see README).
    """
    model, version = services.settings.embedding_model, services.engine.pipeline_version
    if vector_index.indexed(services.db) and query.shape[0] == vector_index.DIM:
        with services.db.transaction() as session:
            found = vector_index.nearest(session, scope, model, version, query, k, exclude)
            matched = select(AudioRow).where(AudioRow.id.in_([audio_id for audio_id, _ in found]))
            rows = {row.id: row for row in session.scalars(matched)}
        return [Match(rows[audio_id], score) for audio_id, score in found if audio_id in rows]
    with services.db.session() as session:
        ids, vectors = all_embeddings(session, model, version, scope)
        if not ids or vectors.shape[1] != query.shape[0]:
            return []
        norms = np.linalg.norm(vectors, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
        scores = vectors @ query.astype(np.float32) / np.maximum(norms, 1e-12)
        order = [i for i in np.argsort(-scores, kind="stable") if ids[i] != exclude][:k]
        rows = {
            row.id: row for row in session.scalars(select(AudioRow).where(AudioRow.id.in_([ids[i] for i in order])))
        }
    return [Match(rows[ids[i]], float(scores[i])) for i in order if ids[i] in rows]


def search_text(services: Services, scope: Scope, text: str, k: int) -> list[Match]:
    """Uploads nearest to a text query in CLAP's joint space. Raises ModelUnavailableError."""
    query = services.workers.embed_text(text)  # in this process, or by a `motif worker` with a broker
    return nearest(services, scope, query, k)
