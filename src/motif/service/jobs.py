"""Durable jobs: their states, the queue over SQL rows (enqueue, claim, finish, cancel), and recovery.

A job is a row; a worker claims it with one atomic UPDATE, so two workers never run the same job. Every
state change is a committed transaction, so a process killed at any moment leaves each job queued,
processing (re-queued at the next start) or finished. The worker threads are `motif.service.worker`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import Subquery, case, func, select, update
from sqlalchemy.orm import Session

from motif.service.store import AudioRow, Database, JobRow, new_id, utcnow

log = logging.getLogger(__name__)


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobKind(StrEnum):
    EMBEDDING = "embedding"
    GENERATION = "generation"


class ErrorCode(StrEnum):
    """Why a job failed, for clients that branch on it (the message says it in words)."""

    MODEL_UNAVAILABLE = "model_unavailable"
    INVALID_REQUEST = "invalid_request"
    INTERRUPTED = "interrupted"  # the server stopped while it ran, max_job_attempts times
    INTERNAL = "internal"


@dataclass(frozen=True)
class Recovery:
    requeued: int
    failed: int
    cancelled: int


class JobQueue:
    """The job rows' state machine, shared by both dispatchers: in-process threads (`motif.service.worker`)
    and Celery workers (`motif.service.celery_app`). The row is the truth; a broker message only wakes."""

    def __init__(self, db: Database, max_attempts: int) -> None:
        self.db = db
        self.max_attempts = max_attempts

    def enqueue(
        self, session: Session, kind: JobKind, audio_id: str, params: dict[str, Any] | None = None,
        owner: str | None = None,
    ) -> JobRow:  # fmt: skip
        """Add a queued job inside the caller's transaction (so it commits with what it belongs to)."""
        params = params or {}
        row = JobRow(id=new_id(), kind=kind.value, audio_id=audio_id, owner=owner, status=JobStatus.QUEUED.value,
                     params=params, progress=0.0, attempts=0, cancel_requested=False,
                     webhook_state="pending" if params.get("callback_url") else None)  # fmt: skip
        session.add(row)
        session.flush()
        return row

    def ensure_embedding(self, session: Session, audio_id: str) -> JobRow:
        """The upload's active embedding job; else its last one re-queued if it failed; else a new one.

        The crash-loop guard: a job failed because the server died under it `max_attempts` times stays
        failed with its reason (re-running it would kill the server again), and a re-queued job keeps its
        count of attempts, so recovery still fails it once it reaches `max_attempts`.
        """
        latest = session.scalar(
            select(JobRow)
            .where(JobRow.kind == JobKind.EMBEDDING.value, JobRow.audio_id == audio_id)
            .order_by(JobRow.seq.desc())
            .limit(1)
        )
        if latest is None or latest.status == JobStatus.COMPLETED.value:  # none, or a vector of another model
            owner = session.scalar(select(AudioRow.owner).where(AudioRow.id == audio_id))
            return self.enqueue(session, JobKind.EMBEDDING, audio_id, owner=owner)
        if latest.error_code == ErrorCode.INTERRUPTED.value:
            return latest
        if latest.status in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
            latest.status, latest.progress = JobStatus.QUEUED.value, 0.0
            latest.error = latest.error_code = latest.started_at = latest.finished_at = None
            session.flush()
        return latest

    def get(self, job_id: str) -> JobRow | None:
        with self.db.session() as session:
            return session.scalar(select(JobRow).where(JobRow.id == job_id))

    def claim(self, kind: JobKind, n: int) -> list[JobRow]:
        """Atomically move up to n queued jobs of `kind` to processing, in fair order; returns them, oldest first.

        Fair order takes each owner's oldest job before anyone's second (see `_turns`), so one key's hundred
        queued jobs do not starve another key's one. On PostgreSQL, where several worker hosts claim at once,
        the fairest candidates are locked with FOR UPDATE SKIP LOCKED: a claim never waits for another's and
        never comes back empty while unlocked jobs are queued. SQLite serialises writers, so one conditional
        UPDATE is enough there.
        """
        if n <= 0:
            return []
        with self.db.transaction() as session:
            if session.get_bind().dialect.name == "postgresql":
                seqs = _lock_fairest(session, kind, n)
                if not seqs:
                    return []
                chosen = JobRow.seq.in_(seqs)
            else:
                turns = _turns(kind)
                fairest = select(turns.c.seq).order_by(turns.c.turn, turns.c.seq).limit(n).scalar_subquery()
                chosen = JobRow.seq.in_(fairest)
            now = utcnow()
            claim = (
                update(JobRow)
                .where(chosen, JobRow.status == JobStatus.QUEUED.value)
                .values(
                    status=JobStatus.PROCESSING.value,
                    started_at=now,
                    updated_at=now,
                    progress=0.0,
                    attempts=JobRow.attempts + 1,
                )  # fmt: skip
                .returning(JobRow.seq)
                .execution_options(synchronize_session=False)
            )
            claimed = list(session.scalars(claim))
            if not claimed:
                return []
            return list(session.scalars(select(JobRow).where(JobRow.seq.in_(claimed)).order_by(JobRow.seq)))

    def set_progress(self, job_id: str, progress: float) -> None:
        with self.db.transaction() as session:
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == JobStatus.PROCESSING.value)
                .values(progress=min(100.0, max(0.0, progress)), updated_at=utcnow())
            )

    def complete(
        self, job_id: str, result: dict[str, Any] | None = None, output_key: str | None = None,
        session: Session | None = None, output_bytes: int | None = None,
    ) -> bool:  # fmt: skip
        """processing -> completed. False when the job is no longer processing (deleted, cancelled).

        With `session`, the change joins the caller's transaction (e.g. with the embedding it produced).
        """
        values = dict(progress=100.0, result=result, output_key=output_key, output_bytes=output_bytes)
        if session is not None:
            return self._finish_in(session, job_id, JobStatus.COMPLETED, values)
        with self.db.transaction() as own:
            return self._finish_in(own, job_id, JobStatus.COMPLETED, values)

    def fail(self, job_id: str, error: str, code: ErrorCode) -> bool:
        return self._finish(job_id, JobStatus.FAILED, error=error, error_code=code.value)

    def mark_cancelled(self, job_id: str) -> bool:
        return self._finish(job_id, JobStatus.CANCELLED, error="cancelled on request")

    def release(self, job_id: str) -> None:
        """Give a processing job back to the queue without counting the attempt (graceful shutdown)."""
        with self.db.transaction() as session:
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == JobStatus.PROCESSING.value)
                .values(
                    status=JobStatus.QUEUED.value,
                    progress=0.0,
                    started_at=None,
                    updated_at=utcnow(),
                    attempts=case((JobRow.attempts > 0, JobRow.attempts - 1), else_=0),
                )  # fmt: skip
            )

    def _finish(self, job_id: str, status: JobStatus, **values: Any) -> bool:
        with self.db.transaction() as session:
            return self._finish_in(session, job_id, status, values)

    @staticmethod
    def _finish_in(session: Session, job_id: str, status: JobStatus, values: dict[str, Any]) -> bool:
        now = utcnow()
        done = session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.status == JobStatus.PROCESSING.value)
            .values(status=status.value, finished_at=now, updated_at=now, **values)
        )
        return bool(done.rowcount)  # type: ignore[attr-defined]

    def request_cancel(self, job_id: str) -> JobStatus | None:
        """Queued: cancelled now. Processing: flagged; the worker stops at its next step. Returns the status."""
        now = utcnow()
        with self.db.transaction() as session:
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.CANCELLED.value, finished_at=now, updated_at=now, error="cancelled on request")
            )
            session.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == JobStatus.PROCESSING.value)
                .values(cancel_requested=True, updated_at=now)
            )
            status = session.scalar(select(JobRow.status).where(JobRow.id == job_id))
        return None if status is None else JobStatus(status)

    def is_cancel_requested(self, job_id: str) -> bool:
        with self.db.session() as session:
            flag = session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id))
        return flag is None or bool(flag)  # a deleted job is as good as cancelled

    def recover(self) -> Recovery:
        """At start-up: jobs a dead process left processing go back to the queue, or fail after max_attempts."""
        now = utcnow()
        processing = JobRow.status == JobStatus.PROCESSING.value
        reason = (f"the server stopped while this job was running, {self.max_attempts} times; "
                  "giving up (see the server log)")  # fmt: skip
        with self.db.transaction() as session:
            cancelled = session.execute(
                update(JobRow).where(processing, JobRow.cancel_requested.is_(True))
                .values(status=JobStatus.CANCELLED.value, finished_at=now, updated_at=now, error="cancelled on request")
            ).rowcount  # type: ignore[attr-defined]  # fmt: skip
            failed = session.execute(
                update(JobRow).where(processing, JobRow.attempts >= self.max_attempts)
                .values(status=JobStatus.FAILED.value, finished_at=now, updated_at=now, error=reason,
                        error_code=ErrorCode.INTERRUPTED.value)
            ).rowcount  # type: ignore[attr-defined]  # fmt: skip
            requeued = session.execute(
                update(JobRow).where(processing)
                .values(status=JobStatus.QUEUED.value, progress=0.0, started_at=None, updated_at=now)
            ).rowcount  # type: ignore[attr-defined]  # fmt: skip
        if requeued or failed or cancelled:
            log.warning("interrupted jobs: %d re-queued, %d failed, %d cancelled", requeued, failed, cancelled)
        return Recovery(requeued, failed, cancelled)

    def queue_position(self, job: JobRow) -> int | None:
        """1 = next to start (in the fair order `claim` uses); 0 = running; None = finished."""
        return self.queue_positions([job]).get(job.id)

    def queue_positions(self, jobs: list[JobRow]) -> dict[str, int | None]:
        """`queue_position` of several jobs in one query per job kind (for lists)."""
        out: dict[str, int | None] = {job.id: _position_if_not_queued(job) for job in jobs}
        queued = [job for job in jobs if job.status == JobStatus.QUEUED.value]
        for kind in {job.kind for job in queued}:
            turns = _turns(JobKind(kind))
            mine = [job for job in queued if job.kind == kind]
            place = func.row_number().over(order_by=(turns.c.turn, turns.c.seq)).label("place")
            ranked = select(turns.c.seq, place).subquery()
            query = select(ranked.c.seq, ranked.c.place).where(ranked.c.seq.in_([job.seq for job in mine]))
            with self.db.session() as session:
                position = {seq: place for seq, place in session.execute(query)}
            for job in mine:
                out[job.id] = position.get(job.seq)  # None: claimed in the meantime
        return out

    def depth(self) -> dict[str, dict[str, int]]:
        """{kind: {"queued": n, "processing": n}}."""
        out = {kind.value: {"queued": 0, "processing": 0} for kind in JobKind}
        active = (JobStatus.QUEUED.value, JobStatus.PROCESSING.value)
        with self.db.session() as session:
            query = (select(JobRow.kind, JobRow.status, func.count()).where(JobRow.status.in_(active))
                     .group_by(JobRow.kind, JobRow.status))  # fmt: skip
            for kind, status, count in session.execute(query):
                out.setdefault(kind, {"queued": 0, "processing": 0})[status] = count
        return out


def _turns(kind: JobKind) -> Subquery:
    """Queued jobs of `kind` with their owner's turn: 1 for each owner's oldest, 2 for its next, ...

    Ordered by (turn, seq), owners take turns; within one owner, jobs keep their order.
    """
    turn = func.row_number().over(partition_by=JobRow.owner, order_by=JobRow.seq).label("turn")
    return (select(JobRow.seq, turn)
            .where(JobRow.kind == kind.value, JobRow.status == JobStatus.QUEUED.value).subquery())  # fmt: skip


CLAIM_SLACK = 16  # extra fair-order candidates looked at, for those other claimers hold locked right now


def _lock_fairest(session: Session, kind: JobKind, n: int) -> list[int]:
    """PostgreSQL: lock the n fairest queued jobs nobody else has locked; their seqs in fair order.

    Rows are locked one by one in fair order and only n of them: locking every candidate at once would hide
    the extra ones from concurrent claimers until this transaction ends, and they would come back empty.
    """
    turns = _turns(kind)
    candidates = list(session.scalars(select(turns.c.seq).order_by(turns.c.turn, turns.c.seq).limit(n + CLAIM_SLACK)))
    locked: list[int] = []
    for seq in candidates:
        lock = (select(JobRow.seq).where(JobRow.seq == seq, JobRow.status == JobStatus.QUEUED.value)
                .with_for_update(skip_locked=True))  # fmt: skip
        if session.scalar(lock) is not None:
            locked.append(seq)
            if len(locked) == n:
                break
    return locked


def _position_if_not_queued(job: JobRow) -> int | None:
    return 0 if job.status == JobStatus.PROCESSING.value else None
