"""GET /api/embedding while the embedding is still being computed: 202 with Retry-After, then 200."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import upload
from tests.e2e.server import Server, server_env, wait_for_embedding
from tests.synth import music_like, write_format


def test_a_pending_embedding_answers_202_with_retry_after(model_cache: Path, tmp_path: Path, song: Path) -> None:
    server = Server(tmp_path, server_env(tmp_path / "data", model_cache, EMBEDDING_WAIT_SECONDS="0")).start()
    try:
        client = server.client
        long = write_format(tmp_path / "long.flac", music_like(240.0, 16_000, seed=3), 16_000, "flac")
        assert upload(client, long).status_code == 201  # keeps the embedding worker busy for seconds
        audio_id = upload(client, song).json()["audio_id"]
        pending = client.get(f"/api/embedding/{audio_id}")
        assert pending.status_code == 202 and int(pending.headers["retry-after"]) > 0
        assert pending.json()["status"] == "queued" and pending.json()["job_id"]
        done = wait_for_embedding(client, audio_id)
        assert done.status_code == 200 and len(done.json()["embedding"]) == 512
    finally:
        server.close()
