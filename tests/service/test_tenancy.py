"""Keys, quotas, fair admission and retention on a real SQLite file (the HTTP side: tests/e2e/test_keys.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from motif.config import Settings
from motif.service.jobs import JobKind, JobQueue, JobStatus
from motif.service.keys import OPEN, KeyCommandError, create_key, find_principal, list_keys, revoke_key
from motif.service.quotas import QuotaExceeded, Quotas
from motif.service.retention import expire
from motif.service.runtime import Services, close_services, open_services
from motif.service.store import AudioRow, Database, JobRow, utcnow
from tests.service.conftest import add_audio, tiny_settings


def _own(db: Database, audio_id: str, owner: str | None) -> None:
    with db.transaction() as session:
        session.execute(update(AudioRow).where(AudioRow.id == audio_id).values(owner=owner))


def _enqueue(db: Database, queue: JobQueue, owner: str, n: int, duration: float = 5.0) -> list[str]:
    audio_id = add_audio(db)
    _own(db, audio_id, owner)
    with db.transaction() as session:
        return [queue.enqueue(session, JobKind.GENERATION, audio_id, {"duration": duration}, owner=owner).id
                for _ in range(n)]  # fmt: skip


def test_a_key_is_stored_as_a_hash_found_by_its_secret_and_refused_once_revoked(db: Database) -> None:
    row, secret = create_key(db, "alice")
    assert secret.startswith("motif_") and len(secret) == 49
    with db.engine.connect() as conn:
        stored = [str(v) for r in conn.execute(text("SELECT * FROM api_key")) for v in r]
    assert not any(secret in value for value in stored)
    principal = find_principal(db, secret)
    assert principal is not None and principal.key_id == row.id and not principal.is_admin
    assert find_principal(db, secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    revoke_key(db, "alice")
    assert find_principal(db, secret) is None
    with pytest.raises(KeyCommandError, match="exists already"):
        create_key(db, "alice")
    with pytest.raises(KeyCommandError, match="no key named"):
        revoke_key(db, "bob")
    assert [k.name for k in list_keys(db)] == ["alice"]


def test_one_keys_hundred_jobs_do_not_starve_another_keys_one(db: Database, queue: JobQueue) -> None:
    many = _enqueue(db, queue, "key-a", 100)
    one = _enqueue(db, queue, "key-b", 1)
    jobs = {job.id: job for job in (queue.get(many[50]), queue.get(one[0]), queue.get(many[1]))}
    positions = queue.queue_positions([job for job in jobs.values() if job is not None])
    assert positions[one[0]] == 2 and positions[many[1]] == 3  # a's first, b's only, then a's second
    assert positions[many[50]] == 52
    claimed = [job.id for job in queue.claim(JobKind.GENERATION, 2)]
    assert claimed == [many[0], one[0]]
    assert [job.id for job in queue.claim(JobKind.GENERATION, 3)] == many[1:4]


@pytest.fixture
def quotas(db: Database) -> Quotas:
    settings = Settings(_env_file=None, quota_requests_per_minute=3, quota_active_generations=2,  # type: ignore[call-arg]
                        quota_daily_audio_seconds=20, quota_stored_bytes=1000, max_queued_jobs=5)  # fmt: skip
    return Quotas(settings, db)


def test_rates_active_jobs_and_daily_seconds_are_counted_per_key(db: Database, queue: JobQueue, quotas: Quotas) -> None:
    _, secret = create_key(db, "alice")
    alice = find_principal(db, secret)
    assert alice is not None
    for _ in range(3):
        quotas.hit_rate(alice)
    with pytest.raises(QuotaExceeded) as refused:
        quotas.hit_rate(alice)
    assert refused.value.status == 429 and 0 < (refused.value.retry_after or 0) <= 60
    quotas.hit_rate(OPEN)  # keys off: one trusted tenant, no quota

    quotas.check_generation(alice, 10.0)
    _enqueue(db, queue, str(alice.key_id), 1, duration=10.0)
    with pytest.raises(QuotaExceeded, match="last 24 h") as daily:
        quotas.check_generation(alice, 15.0)
    assert daily.value.status == 429 and 86_000 < (daily.value.retry_after or 0) <= 86_400
    _enqueue(db, queue, str(alice.key_id), 1, duration=1.0)
    with pytest.raises(QuotaExceeded, match="queued or running"):
        quotas.check_generation(alice, 1.0)
    with db.transaction() as session:  # finished and cancelled jobs are not active; cancelled ones cost nothing
        session.execute(update(JobRow).values(status=JobStatus.CANCELLED.value))
    quotas.check_generation(alice, 15.0)


def test_the_server_wide_queue_cap_answers_503_for_every_key(db: Database, queue: JobQueue, quotas: Quotas) -> None:
    _enqueue(db, queue, "someone", 5)
    with pytest.raises(QuotaExceeded, match="queue is full") as full:
        quotas.check_generation(OPEN, 5.0)
    assert full.value.status == 503 and full.value.retry_after


def test_stored_bytes_count_uploads_and_results(db: Database, queue: JobQueue, quotas: Quotas) -> None:
    _, secret = create_key(db, "alice")
    alice = find_principal(db, secret)
    assert alice is not None
    _enqueue(db, queue, str(alice.key_id), 1)  # one upload of 1 byte
    with db.transaction() as session:
        session.execute(update(JobRow).values(output_bytes=900))
    assert quotas.stored_bytes(alice.key_id) == 901
    quotas.check_storage(alice, 99)
    with pytest.raises(QuotaExceeded, match="quota of 1000 bytes") as refused:
        quotas.check_storage(alice, 100)
    assert refused.value.status == 413


@pytest.fixture
def services(model_cache: Path, tmp_path: Path) -> Iterator[Services]:
    settings = tiny_settings(model_cache, tmp_path / "data", result_retention_days=1, upload_retention_days=7)
    opened = open_services(settings, start_workers=False)
    yield opened
    close_services(opened)


def test_retention_deletes_expired_results_and_uploads_with_their_files(services: Services) -> None:
    db, blobs, queue = services.db, services.blobs, services.queue
    old_audio, new_audio = add_audio(db), add_audio(db)
    for audio_id in (old_audio, new_audio):
        blobs.put_bytes(f"uploads/{audio_id}.wav", b"x")
        blobs.put_bytes(f"processed/{audio_id}.npy", b"x")
    with db.transaction() as session:
        jobs = {name: queue.enqueue(session, JobKind.GENERATION, new_audio, {"duration": 5.0}).id
                for name in ("expired", "recent", "running")}  # fmt: skip
    now = utcnow()
    finished = {"expired": now - timedelta(days=2), "recent": now - timedelta(hours=1)}
    with db.transaction() as session:
        for name, when in finished.items():
            session.execute(update(JobRow).where(JobRow.id == jobs[name]).values(
                status=JobStatus.COMPLETED.value, finished_at=when, output_key=f"generated/{jobs[name]}.wav"))
            blobs.put_bytes(f"generated/{jobs[name]}.wav", b"audio")
        session.execute(update(AudioRow).where(AudioRow.id == old_audio).values(created_at=now - timedelta(days=8)))
    expired = expire(services)
    assert (expired.results, expired.uploads) == (1, 1)
    assert queue.get(jobs["expired"]) is None and not blobs.exists(f"generated/{jobs['expired']}.wav")
    assert queue.get(jobs["recent"]) is not None and blobs.exists(f"generated/{jobs['recent']}.wav")
    assert queue.get(jobs["running"]) is not None  # unfinished jobs never expire
    with db.session() as session:
        assert set(session.scalars(select(AudioRow.id))) == {new_audio}
    assert not blobs.exists(f"uploads/{old_audio}.wav") and not blobs.exists(f"processed/{old_audio}.npy")
    assert blobs.exists(f"uploads/{new_audio}.wav")
    assert expire(services) == type(expired)(0, 0)
