"""The crash-loop guard through a real server: an embedding the server dies under MAX_JOB_ATTEMPTS times ends
failed with its reason, and neither the next start-up's backfill nor GET /api/embedding runs it again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from motif.service.jobs import JobKind
from motif.service.store import Database, JobRow, utcnow
from tests.e2e.bombs import write_bomb
from tests.e2e.conftest import upload
from tests.e2e.server import Server, server_env
from tests.service.conftest import wait_until

MAX_JOB_ATTEMPTS = 2
LONG_UPLOAD = 600.0  # seconds: the tiny CLAP needs seconds for it, long enough to be caught running


@pytest.fixture
def own_server(model_cache: Path, tmp_path: Path) -> Iterator[Server]:
    """A server of its own that accepts 10 minutes of audio: this test kills it."""
    env = server_env(tmp_path / "data", model_cache, MAX_DURATION=str(LONG_UPLOAD),
                     MAX_JOB_ATTEMPTS=str(MAX_JOB_ATTEMPTS), EMBEDDING_WAIT_SECONDS="0")  # fmt: skip
    running = Server(tmp_path, env).start()
    yield running
    running.close()


def embedding_job(data: Path, audio_id: str) -> JobRow:
    """The upload's embedding job as stored (read while the server is down or idle)."""
    db = Database(f"sqlite:///{data / 'motif.db'}")
    try:
        with db.session() as session:
            query = select(JobRow).where(JobRow.audio_id == audio_id, JobRow.kind == JobKind.EMBEDDING.value)
            return session.scalars(query).one()
    finally:
        db.dispose()


def test_an_embedding_that_kills_the_server_is_failed_and_never_run_again(own_server: Server, tmp_path: Path) -> None:
    server, client = own_server, own_server.client
    data = Path(server.env["DATA_DIR"])
    path = write_bomb(tmp_path / "long.flac", "flac", 8_000, 1, LONG_UPLOAD, click_every=0.5)
    answer = upload(client, path)
    assert answer.status_code == 201, answer.text
    audio_id = answer.json()["audio_id"]

    for _ in range(MAX_JOB_ATTEMPTS):  # the embedding is running ... and the server dies under it
        wait_until(lambda: client.get(f"/api/audio/{audio_id}").json()["embedding_status"] == "processing",
                   timeout=120, interval=0.02, what="the embedding to start")  # fmt: skip
        server.kill()
        server.start()

    reason = client.get(f"/api/embedding/{audio_id}")
    assert reason.status_code == 503 and "stopped while this job was running" in reason.json()["detail"]
    server.kill()
    failed = embedding_job(data, audio_id)
    assert (failed.status, failed.error_code, failed.attempts) == ("failed", "interrupted", MAX_JOB_ATTEMPTS)

    # Long after the failure (a lookup then retries failed jobs), the server starts again: its backfill
    # queues the embeddings uploads lack, and a client asks for this one.
    db = Database(f"sqlite:///{data / 'motif.db'}")
    with db.transaction() as session:
        session.execute(update(JobRow).where(JobRow.id == failed.id).values(finished_at=utcnow() - timedelta(hours=1)))
    db.dispose()
    server.start()
    assert client.get(f"/api/embedding/{audio_id}").status_code == 503
    assert client.get(f"/api/audio/{audio_id}").json()["embedding_status"] == "failed"
    assert client.get("/api/health").json()["queue"]["embedding"] == {"queued": 0, "processing": 0}
    server.stop()
    after = embedding_job(data, audio_id)
    assert (after.status, after.attempts, after.error) == ("failed", MAX_JOB_ATTEMPTS, failed.error)
