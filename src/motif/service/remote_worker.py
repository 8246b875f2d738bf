"""`motif worker`: a Celery worker process that loads the models once and runs jobs from the broker.

Generation tasks run in Celery's thread pool; each claims a job and hands it to this process's one decode
loop (the same `GenerationWorker` the embedded mode runs, fed from memory instead of polling), then waits
for its outcome, so jobs that arrive while a batch decodes join it at the next step. A heartbeat thread
renews the leases of every job in the process and reads their cancel flags, one query a second; the
sweeper re-publishes jobs whose worker died. One CUDA context per process: one Engine, shared.
"""

from __future__ import annotations

import logging
import os
import queue as stdlib_queue
import socket
import threading
from typing import Any

from celery import Celery, signals
from celery.utils.nodenames import host_format

from motif.config import Settings
from motif.service import cluster_events, leases
from motif.service.blobs import open_blob_store
from motif.service.celery_app import QUEUES, TASKS, TEXT_TASK, CeleryDispatcher, make_celery
from motif.service.cluster_events import NotifyingEvents
from motif.service.engine_host import EngineHost
from motif.service.jobs import JobKind, JobQueue
from motif.service.store import Database, JobRow
from motif.service.worker import EmbeddingWorker, GenerationWorker, JobEvents, WorkerContext

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0  # seconds between two lease renewals (and cancel-flag reads) of this process's jobs
REPUBLISH_LIMIT = 64  # wake-ups published per sweep for jobs whose message seems lost
PRESENCE_BEATS = 5  # heartbeats between two presence writes (API processes count workers seen in 15 s)


class FedGenerationWorker(GenerationWorker):
    """The decode loop of a worker process, fed by Celery tasks through `submit` rather than by polling."""

    def __init__(self, ctx: WorkerContext, dispatcher: CeleryDispatcher) -> None:
        super().__init__(ctx)
        self.dispatcher = dispatcher
        self.inbox: stdlib_queue.Queue[JobRow] = stdlib_queue.Queue()
        self.done: dict[str, threading.Event] = {}
        self.held: set[str] = set()  # claimed by this process, waiting in the inbox or decoding: leases to renew
        self.peak: dict[str, int] = {}  # job id -> most jobs decoding together while it ran

    def submit(self, row: JobRow) -> threading.Event:
        """Hand a claimed job to the decode loop; the event is set once its outcome is committed."""
        event = self.done.setdefault(row.id, threading.Event())
        self.held.add(row.id)
        self.inbox.put(row)
        self.wakeup.set()
        return event

    def take(self, n_free: int) -> list[Any]:
        jobs: list[Any] = []
        while len(jobs) < n_free:
            try:
                row = self.inbox.get_nowait()
            except stdlib_queue.Empty:
                break
            self.in_flight.add(row.id)
            try:
                jobs.append(self.prepare(row))
            except Exception as error:
                self.finish(row, error)
        for job_id in self.in_flight:
            self.peak[job_id] = max(self.peak.get(job_id, 0), len(self.in_flight))
        return jobs

    def take_more(self, n_free: int) -> list[Any]:
        return self.take(n_free) if not self.inbox.empty() else []

    def should_cancel(self, job_id: str) -> bool:
        return self.ctx.stopping.is_set() or job_id in self.cancelled  # the heartbeat fills `cancelled`

    def result_extra(self, row: JobRow) -> dict[str, Any]:
        return {"worker": {"host": socket.gethostname(), "pid": os.getpid(), "peak_batch": self.peak.get(row.id, 1)}}

    def finish(self, row: JobRow, outcome: Any) -> None:
        try:
            super().finish(row, outcome)
        finally:
            if self.ctx.stopping.is_set():  # released for another worker: wake one
                self.dispatcher.wake(JobKind.GENERATION, row.id)
            self.peak.pop(row.id, None)
            self.held.discard(row.id)
            event = self.done.pop(row.id, None)
            if event is not None:
                event.set()


class WorkerProcess:
    """What one `motif worker` process holds: database, storage, the Engine, the decode loop, the heartbeat."""

    def __init__(self, settings: Settings, kinds: list[JobKind], hostname: str | None = None) -> None:
        self.settings, self.kinds = settings, kinds
        self.name = f"{host_format(hostname or 'celery@%h')}/{os.getpid()}"
        self.db = Database(settings.resolved_database_url)
        self.db.check_schema()  # a worker never migrates: `motif db upgrade` is a deployment step
        self.blobs = open_blob_store(settings.storage_url, settings.data_dir, settings.s3_endpoint_url)
        self.queue = JobQueue(self.db, settings.max_job_attempts)
        self.dispatcher = CeleryDispatcher(settings, self.db)
        self.consuming = threading.Event()  # Celery said ready: API processes may count this worker
        events = NotifyingEvents(self.db) if cluster_events.supported(self.db) else JobEvents()  # to API processes
        self.ctx = WorkerContext(settings, EngineHost(settings), self.db, self.blobs, self.queue, events)
        self.generation = FedGenerationWorker(self.ctx, self.dispatcher)
        self.embedding = EmbeddingWorker(self.ctx)
        self.embedding_lock = threading.Lock()  # CLAP runs one upload at a time per process
        self.embedding_jobs: set[str] = set()
        self.beat = threading.Thread(target=self._beat, name="motif-lease-heartbeat", daemon=True)

    def start(self) -> None:
        """Load the models (in this thread: the worker consumes nothing before they are ready), then beat."""
        if JobKind.EMBEDDING in self.kinds:
            self.embedding.warm_up()  # also queues the embeddings uploads lack
        if JobKind.GENERATION in self.kinds:
            self.generation.warm_up()
            self.generation.warm_up = lambda: None  # type: ignore[method-assign]  # loaded already
            self.generation.start()
        self.beat.start()

    def stop(self) -> None:
        """Warm shutdown: running generations stop at their next step and go back to the queue (re-published)."""
        self.ctx.stopping.set()
        self.generation.wakeup.set()
        if self.consuming.is_set():
            self.consuming.clear()
            try:
                leases.retire(self.db, self.name)
            except Exception:  # API processes stop counting it WORKER_SEEN_SECONDS later anyway
                log.exception("could not remove this worker's presence row")

    def run_generation(self, job_id: str | None) -> str:
        rows = self.queue.claim(JobKind.GENERATION, 1)
        if not rows:
            return f"nothing to claim (woken for {job_id})"
        log.info("claimed generation %s (woken for %s, attempt %d)", rows[0].id, job_id, rows[0].attempts)
        self.generation.submit(rows[0]).wait()
        return rows[0].id

    def run_embedding(self, job_id: str | None) -> str:
        with self.embedding_lock:
            rows = self.queue.claim(JobKind.EMBEDDING, 1)
            if not rows:
                return f"nothing to claim (woken for {job_id})"
            self.embedding_jobs.add(rows[0].id)
            try:
                self.embedding.embed(rows[0])
            except Exception as error:
                self.embedding.settle(rows[0].id, error)
            finally:
                self.embedding_jobs.discard(rows[0].id)
            return rows[0].id

    def embed_text(self, text: str) -> list[float]:
        """TEXT_TASK: a text query's CLAP vector, for an API process (which runs no model)."""
        return [float(x) for x in self.ctx.host.engine.embed_text([text])[0]]

    def _beat(self) -> None:
        sweep_every = max(1, int(self.settings.job_lease_seconds / 3))  # beats between two sweeps
        n, announced = 0, False
        while not self.ctx.stopping.wait(HEARTBEAT_INTERVAL):
            try:
                beat = leases.heartbeat(self.db, set(self.generation.held) | set(self.embedding_jobs))
                self.generation.cancelled |= beat.cancelled & self.generation.held
            except Exception:  # a database hiccup: the leases last JOB_LEASE_SECONDS; try again next beat
                log.exception("lease heartbeat failed")
            if self.consuming.is_set() and (n % PRESENCE_BEATS == 0 or not announced):
                try:
                    leases.announce(self.db, self.name, [QUEUES[kind] for kind in self.kinds])
                    announced = True
                except Exception:  # counted as gone after WORKER_SEEN_SECONDS unless the next write works
                    log.exception("could not write this worker's presence")
            if n % sweep_every == 0:
                try:
                    self._sweep()
                except Exception:  # the next sweep retries; other workers sweep too
                    log.exception("lease sweep failed")
            n += 1

    def _sweep(self) -> None:
        found = leases.sweep(self.db, self.settings.job_lease_seconds, self.settings.max_job_attempts)
        for kind, job_id in found.requeued:
            self.dispatcher.wake(kind, job_id)
        for kind in self.kinds:
            if _queue_is_empty(self.dispatcher.app, QUEUES[kind]):
                for job_id in leases.unclaimed(self.db, kind, self.settings.job_lease_seconds, REPUBLISH_LIMIT):
                    self.dispatcher.wake(kind, job_id)


def _queue_is_empty(app: Celery, name: str) -> bool:
    from amqp.exceptions import ChannelError

    with app.connection_for_write() as connection:
        try:
            _, count, _ = connection.default_channel.queue_declare(queue=name, passive=True)
        except ChannelError:  # Redis drops an empty list: no queue is an empty queue
            return True
    return int(count) == 0


def register_tasks(app: Celery, process: WorkerProcess) -> None:
    """The tasks, bound to this process's WorkerProcess (a job's message carries only its id)."""
    app.task(name=TASKS[JobKind.GENERATION], ignore_result=True)(process.run_generation)
    app.task(name=TASKS[JobKind.EMBEDDING], ignore_result=True)(process.run_embedding)
    app.task(name=TEXT_TASK, ignore_result=False)(process.embed_text)


def run_worker(settings: Settings, kinds: list[JobKind], concurrency: int, hostname: str | None = None) -> None:
    """Block running a Celery worker for `kinds` with `concurrency` task threads (the CLI's default:
    MAX_BATCH_SIZE, so a worker claims no more generations than its decode loop can take at once)."""
    app = make_celery(settings)
    process = WorkerProcess(settings, kinds, hostname)
    register_tasks(app, process)
    process.start()
    signals.worker_ready.connect(lambda **_: process.consuming.set(), weak=False)
    signals.worker_shutting_down.connect(lambda **_: process.stop(), weak=False)
    argv = ["worker", "--pool=threads", f"--concurrency={concurrency}", "--without-gossip", "--without-mingle",
            f"--queues={','.join(QUEUES[k] for k in kinds)}", f"--loglevel={settings.log_level}"]  # fmt: skip
    if hostname:
        argv.append(f"--hostname={hostname}")
    try:
        app.worker_main(argv)
    finally:
        process.stop()
