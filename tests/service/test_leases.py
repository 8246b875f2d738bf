"""Claims, leases and the sweeper on real SQLite and PostgreSQL: what distributed workers rely on."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from motif.service import leases
from motif.service.jobs import JobKind, JobQueue, JobStatus, _lock_fairest
from motif.service.store import Database, JobRow, utcnow
from tests.service.conftest import add_audio, claim_concurrently
from tests.services import Service, create_database

LEASE = 30.0


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'motif.db'}"
    else:
        url = create_database(request.getfixturevalue("postgres"), f"l_{uuid.uuid4().hex[:12]}")
    db = Database(url)
    db.migrate()
    yield db
    db.dispose()


def _enqueue(db: Database, queue: JobQueue, owners: list[str | None]) -> list[str]:
    audio_id = add_audio(db)
    with db.transaction() as session:
        return [queue.enqueue(session, JobKind.GENERATION, audio_id, {}, owner=owner).id for owner in owners]


def _age(db: Database, job_id: str, seconds: float) -> None:
    with db.transaction() as session:
        aged = utcnow() - timedelta(seconds=seconds)
        session.execute(update(JobRow).where(JobRow.id == job_id).values(updated_at=aged))


def test_concurrent_claims_take_each_job_once_in_fair_order(shared_db: Database) -> None:
    queue = JobQueue(shared_db, max_attempts=3)
    ids = _enqueue(shared_db, queue, ["a"] * 30 + ["b"] * 2)
    assert [job.id for job in queue.claim(JobKind.GENERATION, 2)] == [ids[0], ids[30]]  # a's first, then b's first
    claimed = claim_concurrently(queue, threads=6, batch=1)
    assert sorted(claimed) == sorted(set(ids) - {ids[0], ids[30]})  # every other job, each once


def test_heartbeat_renews_leases_and_reports_cancels(shared_db: Database) -> None:
    queue = JobQueue(shared_db, max_attempts=3)
    running, cancelled = _enqueue(shared_db, queue, [None, None])
    queue.claim(JobKind.GENERATION, 2)
    queue.request_cancel(cancelled)
    _age(shared_db, running, LEASE * 2)
    beat = leases.heartbeat(shared_db, {running, cancelled, "gone"})
    assert beat.running == {running} and beat.cancelled == {cancelled, "gone"}
    assert leases.sweep(shared_db, LEASE, 3).requeued == []  # the heartbeat renewed it


def test_an_expired_lease_is_requeued_then_failed_after_max_attempts(shared_db: Database) -> None:
    queue = JobQueue(shared_db, max_attempts=2)
    (job_id,) = _enqueue(shared_db, queue, [None])
    for attempt in (1, 2):
        assert [job.id for job in queue.claim(JobKind.GENERATION, 1)] == [job_id]
        _age(shared_db, job_id, LEASE + 1)  # its worker died: no heartbeat
        found = leases.sweep(shared_db, LEASE, 2)
        if attempt == 1:
            assert found.requeued == [(JobKind.GENERATION, job_id)] and queue.get(job_id).status == "queued"  # type: ignore[union-attr]
    assert found.failed == [job_id]
    row = queue.get(job_id)
    assert row is not None and (row.status, row.error_code, row.attempts) == (JobStatus.FAILED, "interrupted", 2)
    assert leases.sweep(shared_db, LEASE, 2) == leases.Sweep([], [])  # and it stays failed


def test_unclaimed_lists_only_jobs_queued_longer_than_a_lease(shared_db: Database) -> None:
    queue = JobQueue(shared_db, max_attempts=3)
    old, new = _enqueue(shared_db, queue, [None, None])
    _age(shared_db, old, LEASE + 1)
    assert leases.unclaimed(shared_db, JobKind.GENERATION, LEASE, 10) == [old]
    assert leases.unclaimed(shared_db, JobKind.EMBEDDING, LEASE, 10) == []
    assert new not in leases.unclaimed(shared_db, JobKind.GENERATION, LEASE, 10)


def test_a_claim_in_progress_on_postgresql_hides_only_the_jobs_it_takes(postgres: Service) -> None:
    db = Database(create_database(postgres, f"l_{uuid.uuid4().hex[:12]}"))
    db.migrate()
    queue = JobQueue(db, max_attempts=3)
    ids = _enqueue(db, queue, [None, None, None])
    try:
        with db.transaction() as slow:  # one worker's claim, not committed yet
            (held,) = _lock_fairest(slow, JobKind.GENERATION, 1)
            others = queue.claim(JobKind.GENERATION, 5)  # another worker, meanwhile: skips only that row
            assert len(others) == 2 and held not in {job.seq for job in others}
        assert {job.id for job in others} == set(ids[1:])
    finally:
        db.dispose()
