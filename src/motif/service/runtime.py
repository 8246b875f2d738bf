"""One process's service objects, opened at start-up and closed at shutdown (the app's lifespan uses them).

Start-up is where durability is restored: take the data directory's lock, migrate the schema, sweep
what a killed process left half-done, re-queue its interrupted jobs, then start the workers. The workers
import the engine (torch), queue the embeddings uploads lack and load the models in their own threads,
so the server answers /api/health within a second or so and says which models are still loading.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import anyio
from sqlalchemy import make_url, select

from motif.config import Settings
from motif.service.blobs import AREAS, BlobStore, LocalBlobStore
from motif.service.engine_host import EngineHost, ModelState
from motif.service.jobs import JobQueue
from motif.service.metrics import Metrics
from motif.service.migrations import head
from motif.service.quotas import Quotas
from motif.service.store import AudioRow, Database, JobRow
from motif.service.worker import JobEvents, WorkerContext, Workers

if TYPE_CHECKING:
    from motif.engine import Engine
    from motif.service.retention import RetentionSweeper

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
    quotas: Quotas
    lock: IO[str] | None = None
    sweeper: RetentionSweeper | None = None

    @property
    def engine(self) -> Engine:
        """The Engine; in the first second or two after start-up this waits while a worker imports it."""
        return self.host.engine

    def model_states(self) -> list[ModelState]:
        """Each model: loading (a worker loads it now), loaded, available, missing or error; never loads one."""
        return self.host.model_states(self.workers.warming())


def open_services(settings: Settings, start_workers: bool = True, metrics: Metrics | None = None) -> Services:
    """Everything the API needs, ready to serve; `metrics` hears the workers' jobs. Raises DataDirBusyError."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = _lock_data_dir(settings.data_dir)
    _private_sqlite_file(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    if settings.auto_migrate:
        found = db.migrate()
        if found != head():
            log.info("database schema upgraded from %s to %s", found or "nothing", head())
    else:
        db.check_schema()  # raises SchemaError naming `motif db upgrade`
    blobs = LocalBlobStore(settings.data_dir)
    queue = JobQueue(db, settings.max_job_attempts)
    host = EngineHost(settings)
    queue.recover()
    sweep_orphans(db, blobs)
    events = JobEvents()
    workers = Workers(WorkerContext(settings, host, db, blobs, queue, events, metrics=metrics))
    if start_workers:
        workers.start()  # the embedding worker queues the embeddings uploads lack (backfill_embeddings)
    decodes = anyio.CapacityLimiter(settings.max_concurrent_decodes)
    uploads = anyio.CapacityLimiter(settings.max_concurrent_uploads)
    services = Services(settings, db, blobs, queue, host, events, workers, decodes, uploads, Quotas(settings, db),
                        lock)  # fmt: skip
    if start_workers:
        from motif.service.retention import RetentionSweeper

        services.sweeper = RetentionSweeper(services)
        services.sweeper.start()
    return services


def close_services(services: Services, timeout: float = 30.0) -> None:
    if services.sweeper is not None:
        services.sweeper.stop()
    services.workers.stop(timeout)
    services.db.dispose()
    if services.lock is not None:
        services.lock.close()  # releases the flock


def _private_sqlite_file(url: str) -> None:
    """Create (or tighten) a SQLite database file 0600 before SQLite opens it: its -wal and -shm files
    copy the database file's mode, so they are private too."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    os.chmod(path, 0o600)
    for suffix in ("-wal", "-shm"):
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists():
            os.chmod(sidecar, 0o600)


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

