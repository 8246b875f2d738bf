"""One process's service objects, opened at start-up and closed at shutdown (the app's lifespan uses them).

Start-up is where durability is restored: take the data directory's lock, migrate the schema, sweep
what a killed process left half-done, re-queue its interrupted jobs, then start the workers. The workers
import the engine (torch), queue the embeddings uploads lack and load the models in their own threads,
so the server answers /api/health within a second or so and says which models are still loading.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import anyio
from sqlalchemy import select

from motif.config import Settings
from motif.service.blobs import AREAS, BlobStore, LocalBlobStore
from motif.service.engine_host import EngineHost, ModelState
from motif.service.jobs import JobQueue
from motif.service.store import AudioRow, Database, JobRow
from motif.service.worker import JobEvents, WorkerContext, Workers

if TYPE_CHECKING:
    from motif.engine import Engine

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
    host: EngineHost
    events: JobEvents
    workers: Workers
    decode_limiter: anyio.CapacityLimiter  # uploads decoded at once: bounds memory, not only CPU
    upload_limiter: anyio.CapacityLimiter  # upload requests in flight; more are refused with 503
    lock: IO[str] | None = None

    @property
    def engine(self) -> Engine:
        """The Engine; in the first second or two after start-up this waits while a worker imports it."""
        return self.host.engine

    def model_states(self) -> list[ModelState]:
        """Each model: loading (a worker loads it now), loaded, available, missing or error; never loads one."""
        return self.host.model_states(self.workers.warming())


def open_services(settings: Settings, start_workers: bool = True) -> Services:
    """Everything the API needs, ready to serve. Raises DataDirBusyError."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_data_dir(settings.data_dir)
    db = Database(settings.resolved_database_url)
    found = db.migrate()
    log.info("database %s (schema %d)", settings.resolved_database_url, found)
    blobs = LocalBlobStore(settings.data_dir)
    queue = JobQueue(db, settings.max_job_attempts)
    host = EngineHost(settings)
    queue.recover()
    sweep_orphans(db, blobs)
    events = JobEvents()
    workers = Workers(WorkerContext(settings, host, db, blobs, queue, events))
    if start_workers:
        workers.start()  # the embedding worker queues the embeddings uploads lack (backfill_embeddings)
    decodes = anyio.CapacityLimiter(settings.max_concurrent_decodes)
    uploads = anyio.CapacityLimiter(settings.max_concurrent_uploads)
    return Services(settings, db, blobs, queue, host, events, workers, decodes, uploads, lock)


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

