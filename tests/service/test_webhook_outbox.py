"""Webhook deliveries are rows: a pending one outlives the process that should have sent it, and two
processes sending from the same database deliver each webhook once."""

from __future__ import annotations

import json

from sqlalchemy import select

from motif.config import Settings
from motif.service.jobs import JobKind, JobQueue
from motif.service.store import Database, JobRow
from motif.service.webhooks import WebhookSender
from tests.service.conftest import add_audio, wait_until
from tests.webhook_receiver import SECRET, receiving, signed_by

SETTINGS = Settings(_env_file=None, webhook_secret=SECRET, webhook_allow_private=True)  # type: ignore[call-arg]


def _finished_with_callback(db: Database, queue: JobQueue, url: str) -> str:
    """A generation that completed while no sender ran (as if its process was killed right after)."""
    with db.transaction() as session:
        job_id = queue.enqueue(session, JobKind.GENERATION, add_audio(db), {"duration": 5, "callback_url": url}).id
    assert [row.id for row in queue.claim(JobKind.GENERATION, 1)] == [job_id]
    assert queue.complete(job_id, {"duration": 5.0})
    return job_id


def _state(db: Database, job_id: str) -> tuple[str | None, int]:
    with db.session() as session:
        row = session.scalar(select(JobRow).where(JobRow.id == job_id))
        assert row is not None
        return row.webhook_state, row.webhook_attempts


def test_a_webhook_pending_at_a_crash_is_sent_by_the_next_process(db: Database, queue: JobQueue) -> None:
    with receiving() as (url, handler):
        job_id = _finished_with_callback(db, queue, url)
        assert _state(db, job_id) == ("pending", 0)
        sender = WebhookSender(JobQueue(db, 3), SETTINGS)  # the next process, started after the crash
        sender.start()
        try:
            wait_until(lambda: _state(db, job_id)[0] == "delivered", timeout=30, what="the webhook delivered")
        finally:
            sender.stop()
    assert len(handler.received) == 1
    headers, body = handler.received[0]
    assert signed_by(SECRET, headers, body)
    assert json.loads(body)["generation_id"] == job_id and json.loads(body)["status"] == "completed"


def test_two_processes_sending_from_one_database_deliver_each_webhook_once(db: Database, queue: JobQueue) -> None:
    with receiving() as (url, handler):
        jobs = [_finished_with_callback(db, queue, url) for _ in range(6)]
        senders = [WebhookSender(JobQueue(db, 3), SETTINGS) for _ in range(2)]
        for sender in senders:
            sender.start()
        try:
            wait_until(lambda: all(_state(db, job_id)[0] == "delivered" for job_id in jobs), timeout=30,
                       what="every webhook delivered")  # fmt: skip
        finally:
            for sender in senders:
                sender.stop()
    delivered = sorted(json.loads(body)["generation_id"] for _, body in handler.received)
    assert delivered == sorted(jobs)
    assert {_state(db, job_id)[1] for job_id in jobs} == {1}  # one attempt each


def test_a_receiver_that_keeps_failing_is_given_up_after_max_attempts(db: Database, queue: JobQueue) -> None:
    settings = Settings(_env_file=None, webhook_secret=SECRET, webhook_allow_private=True,
                        webhook_max_attempts=2)  # type: ignore[call-arg]  # fmt: skip
    with receiving(failures=100) as (url, handler):
        job_id = _finished_with_callback(db, queue, url)
        sender = WebhookSender(JobQueue(db, 3), settings)
        sender.start()
        try:
            wait_until(lambda: _state(db, job_id)[0] == "failed", timeout=30, what="the webhook given up")
        finally:
            sender.stop()
    assert len(handler.received) == 2 and _state(db, job_id) == ("failed", 2)
