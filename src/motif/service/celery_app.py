"""Celery, when BROKER_URL is set: the app's configuration, its tasks, and the API side's dispatcher.

A job's message carries only a job id and only wakes a worker: the worker claims the fairest queued job of
that kind from the database (`JobQueue.claim`), which may be another than the one named. So a duplicate
or stale message does nothing harmful: it claims nothing, or a job that needed a worker anyway. The job
row stays the truth; leases (`motif.service.leases`) recover jobs whose worker died.

A text search is not a job: nothing is kept and a lost one is simply asked again. The API process runs no
model, so it sends the text to an embedding worker (`TEXT_TASK`) and waits for the vector through Celery's
result backend, the one task that has a result.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import numpy as np
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from kombu import Queue

from motif.config import Settings
from motif.engine.types import ModelState
from motif.errors import ModelUnavailableError
from motif.service import leases
from motif.service.jobs import JobKind
from motif.service.store import Database

log = logging.getLogger(__name__)

TASKS = {JobKind.GENERATION: "motif.generate", JobKind.EMBEDDING: "motif.embed"}
QUEUES = {JobKind.GENERATION: "generation", JobKind.EMBEDDING: "embedding"}
TEXT_TASK = "motif.embed_text"  # a text query's CLAP vector, served by the embedding queue's workers
RESULT_SECONDS = 300  # a text query's answer is read once, then forgotten; this bounds one nobody read
WORKER_PROBE_SECONDS = 2.0  # /api/health reads which queues have live workers at most this often
WORKER_SEEN_SECONDS = 15.0  # a worker not seen this long is gone (each writes its presence every few seconds)


def make_celery(settings: Settings) -> Celery:
    """The Celery app for BROKER_URL (redis://, rediss:// or sqs://), configured for long, leased jobs."""
    assert settings.broker_url
    app = Celery("motif", broker=settings.broker_url, set_as_current=False)
    transport: dict[str, Any] = {
        # Redis/SQS redeliver a message not acked this long after delivery. With acks_late a generation's
        # message stays unacked while it runs, so this must exceed the longest job or a running job gets a
        # second delivery (harmless: its claim finds nothing, but it costs a slot). A dead worker's job does
        # not wait for it: the lease sweeper re-publishes after JOB_LEASE_SECONDS.
        "visibility_timeout": settings.broker_visibility_seconds,
    }
    if settings.broker_url.startswith("sqs://"):
        transport.update(queue_name_prefix="motif-", wait_time_seconds=10, polling_interval=1)
    app.conf.update(
        task_queues=[Queue(name) for name in QUEUES.values()],
        task_routes={**{TASKS[kind]: {"queue": QUEUES[kind]} for kind in JobKind},
                     TEXT_TASK: {"queue": QUEUES[JobKind.EMBEDDING]}},
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # A job's row is its result: jobs store nothing in the result backend. Only TEXT_TASK does, and its
        # caller deletes the answer once read (`forget`); RESULT_SECONDS bounds one whose caller gave up.
        task_ignore_result=True,
        result_backend=result_backend_url(settings),
        result_expires=RESULT_SECONDS,
        # acks_late: a message is acked when its task returns, so a worker that dies between receiving it and
        # claiming the job leaves the message to be delivered again (the lease covers a death after the claim).
        task_acks_late=True,
        # A worker killed mid-task must not have its message acked (that is Celery's default for acks_late on
        # a lost prefork child); redelivery is a no-op if the sweeper already re-ran the job.
        task_reject_on_worker_lost=True,
        # One reserved message per pool thread: a busy worker does not hoard wake-ups that an idle worker
        # could take; the batching comes from several threads feeding one decode loop, not from prefetch.
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        # Shutdown: SIGTERM is Celery's warm shutdown, which waits for running tasks. `motif worker` hooks
        # worker_shutting_down to stop its decode loop at the next step and hand each job back to the queue
        # (republished). The wait is one decode step, so no soft/hard shutdown timeout is set, and the
        # orchestrator's grace period (compose: 60 s) has ample room.
        # Never revoke/terminate: cancellation is the job row's flag, read by the decode loop between steps.
        worker_enable_remote_control=True,
        worker_hijack_root_logger=False,
        task_default_queue=QUEUES[JobKind.GENERATION],
    )
    return app


def result_backend_url(settings: Settings) -> str:
    """Where TEXT_TASK's answer comes back: the broker's Redis, or for SQS (which has no result store) the
    metadata database through Celery's SQLAlchemy backend (it keeps its own celery_taskmeta table there)."""
    assert settings.broker_url
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return settings.broker_url
    return f"db+{settings.resolved_database_url}"


class CeleryDispatcher:
    """The API side's seam with the workers when BROKER_URL is set (`Workers` is the embedded one).

    Publishes a wake-up per new job; cancellation is the database flag `JobQueue.request_cancel` sets.
    """

    def __init__(self, settings: Settings, db: Database, app: Celery | None = None) -> None:
        self.settings, self.db = settings, db
        self.app = app or make_celery(settings)
        self._probe_lock = threading.Lock()
        self._probed_at = -WORKER_PROBE_SECONDS
        self._served: dict[str, int] = {}
        self._woken: dict[str, float] = {}  # job id -> when its wake-up was published (monotonic s)

    def start(self) -> None:
        """Nothing runs here: jobs run in `motif worker` processes."""

    def wake(self, kind: JobKind, job_id: str | None = None) -> None:
        """Publish a wake-up for `kind`. Never raises: a job whose message was lost is published again by the
        workers' sweeper once it has waited a lease (see `leases.unclaimed`).

        A job already published in the last JOB_LEASE_SECONDS is not published again (a client polling
        GET /embedding of a queued upload would otherwise add a message per request).
        """
        if job_id is not None and not self._first_wake(job_id):
            return
        try:
            self.app.send_task(TASKS[kind], args=[job_id], queue=QUEUES[kind],
                               retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2})  # fmt: skip
        except Exception:
            log.exception("could not publish %s job %s; the sweeper will publish it again", kind.value, job_id)

    def _first_wake(self, job_id: str) -> bool:
        now = time.monotonic()
        with self._probe_lock:
            if len(self._woken) > 10_000:  # forget the old ones; memory stays bounded
                self._woken = {j: t for j, t in self._woken.items() if now - t < self.settings.job_lease_seconds}
            if now - self._woken.get(job_id, -math.inf) < self.settings.job_lease_seconds:
                return False
            self._woken[job_id] = now
            return True

    def cancel(self, job_id: str) -> None:
        """The flag is in the job row already; the worker's heartbeat reads it within a second."""

    def embed_text(self, text: str) -> np.ndarray:
        """A text query's CLAP vector from an embedding worker, within EMBEDDING_WAIT_SECONDS.

        The message expires with the wait, so a worker that starts later does not compute an answer nobody
        reads. Raises ModelUnavailableError: no worker answered in time, or the worker failed.
        """
        wait = max(self.settings.embedding_wait_seconds, 1.0)  # 0 means "never wait" for uploads, not here
        try:
            result = self.app.send_task(TEXT_TASK, args=[text], queue=QUEUES[JobKind.EMBEDDING], expires=wait,
                                        ignore_result=False)  # fmt: skip
        except Exception as error:  # the broker is unreachable
            raise ModelUnavailableError(f"could not reach the broker to embed the text: {error}") from error
        try:
            vector = result.get(timeout=wait)
        except CeleryTimeoutError as error:
            raise ModelUnavailableError(
                f"no embedding worker answered within {wait:g} s (is a `motif worker` serving the "
                f"{QUEUES[JobKind.EMBEDDING]} queue running?)"
            ) from error
        except Exception as error:  # raised by the worker's task, or the result backend is unreachable
            raise ModelUnavailableError(f"the embedding worker could not embed the text: {error}") from error
        finally:
            result.forget()
        return np.asarray(vector, dtype=np.float32)

    def served(self) -> dict[str, int]:
        """{queue: number of live workers consuming it}, from the workers' presence rows (any broker: SQS
        cannot broadcast Celery's inspect), read at most every WORKER_PROBE_SECONDS."""
        with self._probe_lock:
            if time.monotonic() - self._probed_at >= WORKER_PROBE_SECONDS:
                try:
                    self._served = leases.serving(self.db, WORKER_SEEN_SECONDS)
                except Exception:  # the database is unreachable: say so in the log, report no worker
                    log.warning("could not read the workers' presence", exc_info=True)
                    self._served = {}
                self._probed_at = time.monotonic()
            return dict(self._served)

    def alive(self) -> dict[str, bool]:
        served = self.served()
        return {kind.value: served.get(QUEUES[kind], 0) > 0 for kind in JobKind}

    def warming(self) -> dict[str, bool]:
        return {kind.value: False for kind in JobKind}

    def model_states(self) -> list[ModelState]:
        """Models live in the workers: loaded where some worker serves the role's queue."""
        served = self.served()
        ids = {JobKind.GENERATION: self.settings.generation_model, JobKind.EMBEDDING: self.settings.embedding_model}
        states = []
        for kind in JobKind:
            n = served.get(QUEUES[kind], 0)
            if n:
                states.append(ModelState(kind.value, ids[kind], "loaded", f"in {n} `motif worker` process(es)"))
            else:
                detail = f"no `motif worker` consumes the {QUEUES[kind]} queue yet (jobs wait in the queue)"
                states.append(ModelState(kind.value, ids[kind], "available", detail))
        return states

    def stop(self, timeout: float = 30.0) -> None:
        self.app.close()
