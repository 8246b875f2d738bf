"""Job leases for distributed workers: a heartbeat that renews them in bulk, and a sweeper for expired ones;
and the workers' presence (which queues have a live consumer), written with the same heartbeat.

A claimed job's `updated_at` is its lease: the worker running it touches it about once a second (one
UPDATE for all its jobs) and reads their cancel flags in the same round trip. A job whose lease is older
than JOB_LEASE_SECONDS lost its worker (killed, crashed, cut off): the sweeper queues it again and
publishes a wake-up at once, without waiting for the broker's visibility timeout, or fails it with the
reason once MAX_JOB_ATTEMPTS workers died running it, so a job that crashes its worker cannot loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update

from motif.service.jobs import ErrorCode, JobKind, JobStatus
from motif.service.store import Database, JobRow, WorkerRow, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Beat:
    running: set[str]  # still processing (ours): keep going
    cancelled: set[str]  # processing with a cancel request, or no longer ours (deleted, finished): stop


@dataclass(frozen=True)
class Sweep:
    requeued: list[tuple[JobKind, str]]  # expired leases, queued again: publish a wake-up for each
    failed: list[str]  # expired for the last allowed time


def heartbeat(db: Database, job_ids: set[str]) -> Beat:
    """Renew the leases of `job_ids` and read their cancel flags: one transaction for them all."""
    if not job_ids:
        return Beat(set(), set())
    ids = sorted(job_ids)  # a fixed lock order: two processes' heartbeats never deadlock
    processing = JobRow.status == JobStatus.PROCESSING.value
    with db.transaction() as session:
        session.execute(update(JobRow).where(JobRow.id.in_(ids), processing).values(updated_at=utcnow())
                        .execution_options(synchronize_session=False))  # fmt: skip
        rows = session.execute(select(JobRow.id, JobRow.cancel_requested).where(JobRow.id.in_(ids), processing)).all()
    running = {job_id for job_id, flag in rows if not flag}
    return Beat(running, set(job_ids) - running)


def sweep(db: Database, lease_seconds: float, max_attempts: int) -> Sweep:
    """Queue again (or fail, after max_attempts) the jobs whose lease expired; find queued jobs left unclaimed.

    Safe to run in every worker at once: each UPDATE is conditional, so a job is requeued by one of them.
    """
    now = utcnow()
    lease_start = now - timedelta(seconds=lease_seconds)
    expired = (JobRow.status == JobStatus.PROCESSING.value) & (JobRow.updated_at < lease_start)
    reason = (f"the worker running this job stopped (killed or crashed) {max_attempts} times; giving up "
              "(see the workers' logs)")  # fmt: skip
    with db.transaction() as session:
        failed = list(session.scalars(
            update(JobRow).where(expired, JobRow.attempts >= max_attempts, JobRow.cancel_requested.is_(False))
            .values(status=JobStatus.FAILED.value, finished_at=now, updated_at=now, error=reason,
                    error_code=ErrorCode.INTERRUPTED.value).returning(JobRow.id)
        ))  # fmt: skip
        session.execute(update(JobRow).where(expired, JobRow.cancel_requested.is_(True))
                        .values(status=JobStatus.CANCELLED.value, finished_at=now, updated_at=now,
                                error="cancelled on request"))  # fmt: skip
        requeued = session.execute(
            update(JobRow).where(expired).values(status=JobStatus.QUEUED.value, progress=0.0, started_at=None,
                                                 updated_at=now).returning(JobRow.kind, JobRow.id)
        ).all()  # fmt: skip
    if requeued or failed:
        log.warning("expired job leases: %d queued again, %d failed after %d attempts", len(requeued), len(failed),
                    max_attempts)  # fmt: skip
    return Sweep([(JobKind(k), i) for k, i in requeued], failed)


def unclaimed(db: Database, kind: JobKind, older_than: float, limit: int) -> list[str]:
    """Up to `limit` ids of jobs queued more than `older_than` seconds ago: their message may be lost (a publish
    that failed after the row committed, a broker restarted without persistence). The caller publishes
    again only when the broker's queue is empty, so a long queue is never flooded with duplicates.
    """
    cutoff = utcnow() - timedelta(seconds=older_than)
    with db.session() as session:
        query = (select(JobRow.id).where(JobRow.kind == kind.value, JobRow.status == JobStatus.QUEUED.value,
                                         JobRow.updated_at < cutoff).order_by(JobRow.seq).limit(limit))  # fmt: skip
        return list(session.scalars(query))


def announce(db: Database, name: str, queues: list[str]) -> None:
    """Say that worker `name` is alive and consumes `queues` (each worker writes only its own row)."""
    with db.transaction() as session:
        row = session.get(WorkerRow, name)
        if row is None:
            session.add(WorkerRow(name=name, queues=",".join(queues)))
        else:
            row.queues, row.seen_at = ",".join(queues), utcnow()


def retire(db: Database, name: str) -> None:
    """A worker that stops says so; one that is killed just stops being seen."""
    with db.transaction() as session:
        session.execute(delete(WorkerRow).where(WorkerRow.name == name))


def serving(db: Database, seen_within: float) -> dict[str, int]:
    """{queue: workers consuming it}, counting those seen in the last `seen_within` seconds; forgets workers
    unseen for ten times that (killed ones leave their rows behind)."""
    now = utcnow()
    with db.transaction() as session:
        session.execute(delete(WorkerRow).where(WorkerRow.seen_at < now - timedelta(seconds=10 * seen_within)))
        recent = WorkerRow.seen_at >= now - timedelta(seconds=seen_within)
        rows = session.scalars(select(WorkerRow.queues).where(recent))
        counts: dict[str, int] = {}
        for queues in rows:
            for queue in queues.split(","):
                counts[queue] = counts.get(queue, 0) + 1
    return counts
