"""One process's service objects, opened at start-up and closed at shutdown (the app's lifespan uses them).

The one place that chooses the implementations from settings: metadata in SQLite or PostgreSQL
(DATABASE_URL), blobs in a directory or S3 (STORAGE_URL), jobs run by this process's threads or by
Celery workers (BROKER_URL).

Embedded start-up is where durability is restored: take the data directory's lock, migrate the schema,
sweep what a killed process left half-done, re-queue its interrupted jobs, then start the workers. The
workers import the engine (torch), queue the embeddings uploads lack and load the models in their own
threads, so the server answers /api/health within a second or so and says which models are still loading.
With a broker, several API processes share the database and storage: none takes a lock or re-queues jobs
(workers' leases do that), and none runs inference.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

import anyio
import numpy as np
from sqlalchemy import make_url, select

from motif.config import Settings
from motif.service import cluster_events
from motif.service.blobs import AREAS, BlobStore, open_blob_store
from motif.service.cluster_events import EventListener, NotifyingEvents
from motif.service.engine_host import EngineHost, ModelState
from motif.service.events import JobEvents
from motif.service.jobs import JobKind, JobQueue
from motif.service.metrics import Metrics
from motif.service.migrations import head
from motif.service.peaks import PeaksCache
from motif.service.quotas import Quotas
from motif.service.store import AudioRow, Database, JobRow, utcnow
from motif.service.streams import AudioStreams
from motif.service.webhooks import WebhookSender
from motif.service.worker import WorkerContext, Workers

if TYPE_CHECKING:
    from motif.engine import Engine
    from motif.service.retention import RetentionSweeper

log = logging.getLogger(__name__)

LOCK_NAME = "motif.lock"


class DataDirBusyError(RuntimeError):
    """Another Motif server already serves this DATA_DIR (two would re-queue each other's jobs)."""


class Dispatcher(Protocol):
    """How jobs and text queries reach the models: `Workers` (threads in this process) or `CeleryDispatcher`
    (`motif worker` processes behind a broker)."""

    def start(self) -> None: ...
    def wake(self, kind: JobKind, job_id: str | None = None) -> None: ...
    def cancel(self, job_id: str) -> None: ...
    def alive(self) -> dict[str, bool]: ...
    def warming(self) -> dict[str, bool]: ...
    def embed_text(self, text: str) -> np.ndarray: ...
    def stop(self, timeout: float = 30.0) -> None: ...


@dataclass
class Services:
    settings: Settings
    db: Database
    blobs: BlobStore
    queue: JobQueue
    host: EngineHost
    events: JobEvents
    workers: Dispatcher
    decode_limiter: anyio.CapacityLimiter  # uploads decoded at once: bounds memory, not only CPU
    upload_limiter: anyio.CapacityLimiter  # upload requests in flight; more are refused with 503
    quotas: Quotas
    lock: IO[str] | None = None
    sweeper: RetentionSweeper | None = None
    webhooks: WebhookSender | None = None
    listener: EventListener | None = None  # a cluster's job events from other processes (PostgreSQL)
    peaks: PeaksCache = field(init=False)
    media_secret: bytes = field(init=False)  # signs media URLs (MEDIA_TOKEN_SECRET, else random per process)

    def __post_init__(self) -> None:
        self.peaks = PeaksCache(self.blobs)
        self._idle_streams = AudioStreams(self.events)
        secret = self.settings.media_token_secret
        self.media_secret = secret.encode() if secret else secrets.token_bytes(32)

    @property
    def decodes_here(self) -> bool:
        """This process runs the decode loop (embedded), so it has the live audio of its generations."""
        return isinstance(self.workers, Workers)

    @property
    def streams(self) -> AudioStreams:
        """The live audio of this process's running generations (its generation worker writes it). With a
        broker, generations run in `motif worker` processes: live audio is then not served by the API."""
        if isinstance(self.workers, Workers):
            return self.workers.ctx.streams
        return self._idle_streams  # nothing in this process writes to it: listeners get the final file
    @property
    def engine(self) -> Engine:
        """The Engine; in the first second or two after start-up this waits while a worker imports it."""
        return self.host.engine

    def model_states(self) -> list[ModelState]:
        """Each model: loading (a worker loads it now), loaded, available, missing or error; never loads one."""
        if self.settings.distributed:
            from motif.service.celery_app import CeleryDispatcher

            assert isinstance(self.workers, CeleryDispatcher)
            return self.workers.model_states()
        return self.host.model_states(self.workers.warming())


def open_services(settings: Settings, start_workers: bool = True, metrics: Metrics | None = None) -> Services:
    """Everything the API needs, ready to serve; `metrics` hears the workers' jobs.

    Raises DataDirBusyError, SchemaError.
    """
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if settings.distributed:
        return _open_distributed(settings, start_workers)
    lock = _lock_data_dir(settings.data_dir)
    db = _open_database(settings)
    blobs = open_blob_store(settings.storage_url, settings.data_dir, settings.s3_endpoint_url)
    queue = JobQueue(db, settings.max_job_attempts)
    host = EngineHost(settings)
    queue.recover()
    sweep_orphans(db, blobs)
    events = JobEvents()
    workers = Workers(WorkerContext(settings, host, db, blobs, queue, events, metrics=metrics))
    webhooks = WebhookSender(queue, settings)
    events.on_final(webhooks.notify)
    if start_workers:
        webhooks.start()
        workers.start()  # the embedding worker queues the embeddings uploads lack (backfill_embeddings)
    decodes = anyio.CapacityLimiter(settings.max_concurrent_decodes)
    uploads = anyio.CapacityLimiter(settings.max_concurrent_uploads)
    services = Services(settings, db, blobs, queue, host, events, workers, decodes, uploads, Quotas(settings, db),
                        lock, webhooks=webhooks)  # fmt: skip
    if start_workers:
        from motif.service.retention import RetentionSweeper

        services.sweeper = RetentionSweeper(services)
        services.sweeper.start()
    return services


def _open_database(settings: Settings) -> Database:
    _private_sqlite_file(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    if settings.auto_migrate:
        found = db.migrate()
        if found != head():
            log.info("database schema upgraded from %s to %s", found or "nothing", head())
    else:
        db.check_schema()  # raises SchemaError naming `motif db upgrade`
    return db


def _open_distributed(settings: Settings, start_sweeper: bool) -> Services:
    """An API process of a cluster: shared database and storage, jobs published to the broker."""
    from motif.service.celery_app import CeleryDispatcher

    db = _open_database(settings)
    blobs = open_blob_store(settings.storage_url, settings.data_dir, settings.s3_endpoint_url)
    queue = JobQueue(db, settings.max_job_attempts)
    decodes = anyio.CapacityLimiter(settings.max_concurrent_decodes)
    uploads = anyio.CapacityLimiter(settings.max_concurrent_uploads)
    # The EngineHost only answers check_mode and pipeline_version here; models load in `motif worker`.
    webhooks = WebhookSender(queue, settings)
    events = NotifyingEvents(db) if cluster_events.supported(db) else JobEvents()
    events.on_final(webhooks.notify)
    services = Services(settings, db, blobs, queue, EngineHost(settings), events, CeleryDispatcher(settings, db),
                        decodes, uploads, Quotas(settings, db), webhooks=webhooks)  # fmt: skip
    if start_sweeper:
        from motif.service.retention import RetentionSweeper

        services.sweeper = RetentionSweeper(services)
        services.sweeper.start()
        webhooks.start()
        if isinstance(events, NotifyingEvents):  # workers' progress wakes this process's SSE streams at once
            services.listener = EventListener(db, events)
            services.listener.start()  # sends the webhooks of jobs the workers finish (the outbox is in their rows)
    return services


def close_services(services: Services, timeout: float = 30.0) -> None:
    if services.sweeper is not None:
        services.sweeper.stop()
    services.workers.stop(timeout)
    if services.webhooks is not None:
        services.webhooks.stop()
    if services.listener is not None:
        services.listener.stop()
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


ORPHAN_CHECK_BATCH = 500  # keys looked up in the database per query: memory stays bounded in a big bucket


def sweep_orphans(db: Database, blobs: BlobStore, older_than: timedelta | None = None,
                  now: datetime | None = None) -> int:  # fmt: skip
    """Remove files no row points at: a process killed between writing a file and its row, or between
    deleting rows and their files (retention, deletes).

    Embedded start-up (`older_than` None): also temp files, and files of any age, as no other process writes.
    A cluster's periodic sweep passes `older_than`: another process may be between writing a file and
    committing its row, so only files older than that go. The listing comes before the lookups, so a row
    committed before a file's lookup always saves it.
    """
    removed = blobs.sweep_temp() if older_than is None else 0
    cutoff = (now or utcnow()) - older_than if older_than is not None else None
    for area in AREAS:
        old = (key for key, written in blobs.entries(area) if cutoff is None or written < cutoff)
        while batch := list(islice(old, ORPHAN_CHECK_BATCH)):
            for key in set(batch) - _referenced(db, batch):
                blobs.delete(key)
                removed += 1
    if removed:
        log.warning("removed %d unfinished or orphaned files", removed)
    return removed


def _referenced(db: Database, keys: list[str]) -> set[str]:
    with db.session() as session:
        found = set(session.scalars(select(AudioRow.upload_key).where(AudioRow.upload_key.in_(keys))))
        found |= set(session.scalars(select(AudioRow.processed_key).where(AudioRow.processed_key.in_(keys))))
        found |= set(session.scalars(select(JobRow.output_key).where(JobRow.output_key.in_(keys))))
    return found
