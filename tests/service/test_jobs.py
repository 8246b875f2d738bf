"""The durable queue on a real SQLite file: claiming, progress, cancel, recovery after a crash."""

from __future__ import annotations

import asyncio
import threading

from motif.service.jobs import ErrorCode, JobKind, JobQueue, JobStatus
from motif.service.store import Database
from motif.service.worker import JobEvents, ProgressReporter, backfill_embeddings
from tests.service.conftest import add_audio, claim_concurrently


def _enqueue(db: Database, queue: JobQueue, n: int, kind: JobKind = JobKind.GENERATION) -> list[str]:
    audio_id = add_audio(db)
    with db.transaction() as session:
        return [queue.enqueue(session, kind, audio_id, {"duration": 5.0}).id for _ in range(n)]


def test_claims_take_the_oldest_jobs_of_a_kind_and_each_job_once(db: Database, queue: JobQueue) -> None:
    ids = _enqueue(db, queue, 40)
    _enqueue(db, queue, 3, JobKind.EMBEDDING)
    claimed = claim_concurrently(queue, threads=4, batch=3)
    assert sorted(claimed) == sorted(ids) and len(set(claimed)) == len(ids)
    first = queue.claim(JobKind.EMBEDDING, 1)[0]
    assert first.status == JobStatus.PROCESSING and first.attempts == 1 and first.started_at is not None


def test_progress_and_results_apply_only_while_processing(db: Database, queue: JobQueue) -> None:
    (job_id,) = _enqueue(db, queue, 1)
    queue.set_progress(job_id, 50)
    assert queue.get(job_id).progress == 0  # type: ignore[union-attr]  # still queued
    queue.claim(JobKind.GENERATION, 1)
    queue.set_progress(job_id, 42.5)
    assert queue.get(job_id).progress == 42.5  # type: ignore[union-attr]
    assert queue.complete(job_id, {"seed": 1}, "generated/x.wav")
    assert not queue.fail(job_id, "late", ErrorCode.INTERNAL)  # a finished job stays finished
    job = queue.get(job_id)
    assert job is not None and job.status == JobStatus.COMPLETED and job.progress == 100 and job.finished_at


def test_cancel_is_immediate_when_queued_and_a_flag_when_processing(db: Database, queue: JobQueue) -> None:
    running, waiting = _enqueue(db, queue, 2)
    queue.claim(JobKind.GENERATION, 1)  # takes `running`, the oldest
    assert queue.request_cancel(waiting) is JobStatus.CANCELLED
    assert queue.request_cancel(running) is JobStatus.PROCESSING and queue.is_cancel_requested(running)
    assert queue.mark_cancelled(running) and queue.get(running).status == JobStatus.CANCELLED  # type: ignore[union-attr]
    assert queue.request_cancel("unknown") is None


def test_recovery_requeues_interrupted_jobs_until_the_attempt_limit(db: Database, queue: JobQueue) -> None:
    (job_id,) = _enqueue(db, queue, 1)
    for attempt in (1, 2):
        queue.claim(JobKind.GENERATION, 1)  # a worker starts it ... and the process dies
        assert queue.recover().requeued == 1
        job = queue.get(job_id)
        assert job is not None and job.status == JobStatus.QUEUED and job.attempts == attempt and job.progress == 0
    queue.claim(JobKind.GENERATION, 1)
    assert queue.recover().failed == 1
    job = queue.get(job_id)
    assert job is not None and job.status == JobStatus.FAILED and job.error_code == ErrorCode.INTERRUPTED
    assert "3 times" in (job.error or "")


def test_recovery_finishes_cancels_and_a_release_does_not_count_an_attempt(db: Database, queue: JobQueue) -> None:
    flagged, released = _enqueue(db, queue, 2)
    queue.claim(JobKind.GENERATION, 2)
    queue.request_cancel(flagged)
    queue.release(released)  # graceful shutdown
    assert queue.recover().cancelled == 1
    assert queue.get(flagged).status == JobStatus.CANCELLED  # type: ignore[union-attr]
    job = queue.get(released)
    assert job is not None and job.status == JobStatus.QUEUED and job.attempts == 0


def test_queue_position_and_depth(db: Database, queue: JobQueue) -> None:
    ids = _enqueue(db, queue, 3)
    queue.claim(JobKind.GENERATION, 1)
    positions = [queue.queue_position(queue.get(i)) for i in ids]  # type: ignore[arg-type]
    assert positions == [0, 1, 2]
    assert queue.depth()["generation"] == {"queued": 2, "processing": 1}


def test_a_failed_embedding_job_is_requeued_not_duplicated(db: Database, queue: JobQueue) -> None:
    (job_id,) = _enqueue(db, queue, 1, JobKind.EMBEDDING)
    queue.claim(JobKind.EMBEDDING, 1)
    queue.fail(job_id, "model missing", ErrorCode.MODEL_UNAVAILABLE)
    audio_id = queue.get(job_id).audio_id  # type: ignore[union-attr]
    with db.transaction() as session:
        again = queue.ensure_embedding(session, audio_id)
    assert again.id == job_id and again.status == JobStatus.QUEUED and again.error is None
    assert again.attempts == 1  # re-queued, not reset: recovery still counts the start it had


def test_an_embedding_that_kept_killing_the_server_stays_failed_through_backfill_and_lookups(
    db: Database, queue: JobQueue
) -> None:
    (job_id,) = _enqueue(db, queue, 1, JobKind.EMBEDDING)
    for _ in range(queue.max_attempts):  # a worker starts it ... and the process dies, three times
        assert [job.id for job in queue.claim(JobKind.EMBEDDING, 1)] == [job_id]
        queue.recover()
    failed = queue.get(job_id)
    assert failed is not None and failed.status == JobStatus.FAILED and failed.error_code == ErrorCode.INTERRUPTED

    # The next start-up queues the embeddings uploads lack; a client asks for the vector.
    assert backfill_embeddings(db, queue, "tiny", "v1") == 1
    with db.transaction() as session:
        looked_up = queue.ensure_embedding(session, failed.audio_id)

    job = queue.get(job_id)
    assert looked_up.id == job_id and job is not None
    assert (job.status, job.attempts, job.error) == (JobStatus.FAILED, queue.max_attempts, failed.error)
    assert queue.claim(JobKind.EMBEDDING, 1) == []  # nothing runs it a fourth time


def test_progress_writes_are_throttled(db: Database, queue: JobQueue) -> None:
    (job_id,) = _enqueue(db, queue, 1)
    queue.claim(JobKind.GENERATION, 1)
    writes: list[float] = []

    class CountingQueue(JobQueue):
        def set_progress(self, job_id: str, progress: float) -> None:
            writes.append(progress)
            super().set_progress(job_id, progress)

    reporter = ProgressReporter(CountingQueue(db, 3), job_id)
    reporter.written_at -= 1.0  # as if the job started a second ago
    for step in range(1, 1001):
        reporter(step / 10)  # a thousand callbacks in a few milliseconds
    assert len(writes) == 1


def test_job_events_wake_an_async_waiter_from_another_thread() -> None:
    events = JobEvents()

    async def wait() -> bool:
        event = events.subscribe("job")
        threading.Timer(0.05, events.publish, args=("job",)).start()
        await asyncio.wait_for(event.wait(), 5)
        events.unsubscribe("job", event)
        return event.is_set()

    assert asyncio.run(wait())
