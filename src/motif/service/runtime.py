"""One process's service objects, opened at start-up and closed at shutdown (the app's lifespan uses them).

Start-up is where durability is restored: take the data directory's lock, migrate the schema, sweep
what a killed process left half-done, re-queue its interrupted jobs, then start the workers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import anyio
from sqlalchemy import select

from motif.config import Settings
from motif.engine import Engine
from motif.service.blobs import AREAS, BlobStore, LocalBlobStore
from motif.service.jobs import JobQueue
from motif.service.store import AudioRow, Database, EmbeddingRow, JobRow
from motif.service.worker import JobEvents, WorkerContext, Workers

log = logging.getLogger(__name__)

LOCK_NAME = "motif.lock"


class DataDirBusyError(RuntimeError):
    """Another Motif server already serves this DATA_DIR (two would re-queue each other's jobs)."""


@dataclass
class Services:
    settings: Settings
    db: Database
    blobs: BlobStore
    queue: JobQueue
    engine: Engine
    events: JobEvents
    workers: Workers
    decode_limiter: anyio.CapacityLimiter  # uploads decoded at once: bounds memory, not only CPU
    lock: IO[str] | None = None


def open_services(settings: Settings, start_workers: bool = True) -> Services:
    """Everything the API needs, ready to serve. Raises DataDirBusyError."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_data_dir(settings.data_dir)
    db = Database(settings.resolved_database_url)
    found = db.migrate()
    log.info("database %s (schema %d)", settings.resolved_database_url, found)
    blobs = LocalBlobStore(settings.data_dir)
    queue = JobQueue(db, settings.max_job_attempts)
    engine = Engine(settings)
    queue.recover()
    sweep_orphans(db, blobs)
    backfill_embeddings(db, queue, settings.embedding_model, engine.pipeline_version)
    events = JobEvents()
    workers = Workers(WorkerContext(settings, engine, db, blobs, queue, events))
    if start_workers:
        workers.start()
    limiter = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))
    return Services(settings, db, blobs, queue, engine, events, workers, limiter, lock)


def close_services(services: Services, timeout: float = 30.0) -> None:
    services.workers.stop(timeout)
    services.db.dispose()
    if services.lock is not None:
        services.lock.close()  # releases the flock


def _lock_data_dir(data_dir: Path) -> IO[str] | None:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; run one server per DATA_DIR
        return None
    handle = open(data_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.close()
        raise DataDirBusyError(f"another Motif server is already using DATA_DIR={data_dir}") from error
    return handle


def sweep_orphans(db: Database, blobs: BlobStore) -> int:
    """Remove temp files and files no row points at (a process killed between writing a file and its row)."""
    with db.session() as session:
        known = set(session.scalars(select(AudioRow.upload_key)))
        known |= set(session.scalars(select(AudioRow.processed_key)))
        known |= {key for key in session.scalars(select(JobRow.output_key)) if key}
    removed = blobs.sweep_temp()
    for area in AREAS:
        for key in list(blobs.keys(area)):
            if key not in known:
                blobs.delete(key)
                removed += 1
    if removed:
        log.warning("removed %d unfinished or orphaned files", removed)
    return removed


def backfill_embeddings(db: Database, queue: JobQueue, model: str, pipeline_version: str) -> int:
    """Queue an embedding job for every upload with no vector from the configured model (e.g. a new model)."""
    with db.transaction() as session:
        embedded = select(EmbeddingRow.audio_id).where(
            EmbeddingRow.model == model, EmbeddingRow.pipeline_version == pipeline_version
        )
        missing = list(session.scalars(select(AudioRow.id).where(AudioRow.id.not_in(embedded))))
        for audio_id in missing:
            queue.ensure_embedding(session, audio_id)
    if missing:
        log.info("%d uploads have no %s vector yet; their embedding jobs are queued", len(missing), model)
    return len(missing)
