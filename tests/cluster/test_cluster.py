"""The seed's client flow and the failure cases, on a real cluster: API + two workers, Redis, PostgreSQL, S3.

The tests run in this order on one cluster: the flow, duplicate delivery, cancel, batching, then the
ones that kill workers.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from motif.service.store import Database, JobRow
from tests.cluster.conftest import MAX_ATTEMPTS, Cluster
from tests.e2e.conftest import upload
from tests.e2e.server import poll_status, wait_for_embedding
from tests.service.conftest import wait_until
from tests.synth import music_like, write_format

HERE = Path(__file__).resolve().parent


def _song(cluster: Cluster, name: str = "song.wav", seconds: float = 8.0) -> Path:
    return write_format(cluster.workdir / name, music_like(seconds, 32_000, seed=3), 32_000, "wav16")


def _uploaded(cluster: Cluster) -> str:
    response = upload(cluster.client, _song(cluster))
    assert response.status_code == 201, response.text
    audio_id: str = response.json()["audio_id"]
    assert wait_for_embedding(cluster.client, audio_id, timeout=120).status_code == 200
    return audio_id


def _generate(client: httpx.Client, audio_id: str, **params: Any) -> str:
    body = {"duration": 5, "seed": 7, **params}
    response = client.post(f"/api/generate/{audio_id}", json=body)
    assert response.status_code == 202, response.text
    generation_id: str = response.json()["generation_id"]
    return generation_id


def _row(cluster: Cluster, job_id: str) -> JobRow:
    db = Database(cluster.env["DATABASE_URL"])
    try:
        with db.session() as session:
            row = session.scalar(select(JobRow).where(JobRow.id == job_id))
            assert row is not None
            return row
    finally:
        db.dispose()


def test_the_seed_flow_runs_through_broker_workers_and_s3(cluster: Cluster) -> None:
    client = cluster.client
    health = client.get("/api/health").json()
    assert health["ready"] is True
    audio_id = _uploaded(cluster)
    assert any(audio_id in key for key in cluster.objects("uploads"))  # the original is in S3, not on disk
    embedding = client.get(f"/api/embedding/{audio_id}").json()
    assert len(embedding["embedding"]) == 512
    generation_id = _generate(client, audio_id)
    statuses = poll_status(client, generation_id, timeout=180)
    assert statuses[-1]["status"] == "completed", statuses[-1]
    whole = client.get(f"/api/download/{generation_id}")
    assert whole.status_code == 200 and whole.content[:4] == b"RIFF"
    assert int(whole.headers["content-length"]) == len(whole.content)
    part = client.get(f"/api/download/{generation_id}", headers={"Range": "bytes=4-11"})
    assert part.status_code == 206 and part.content == whole.content[4:12]
    assert part.headers["content-range"] == f"bytes 4-11/{len(whole.content)}"
    assert [key for key in cluster.objects("generated") if generation_id in key] != []
    assert client.delete(f"/api/audio/{audio_id}").status_code in (200, 204)
    assert not [key for area in ("uploads", "processed", "generated") for key in cluster.objects(area)
                if audio_id in key or generation_id in key]  # fmt: skip
