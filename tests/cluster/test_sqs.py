"""The seed's client flow with SQS as the broker (moto's server stands in for it, as for S3).

SQS has no result store, so a text search's answer comes back through the metadata database
(Celery's SQLAlchemy result backend): this also tests that path.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.conftest import Cluster, cluster_env, running_cluster
from tests.e2e.conftest import upload
from tests.e2e.server import poll_status, wait_for_embedding
from tests.services import S3_ENV, Service, create_database
from tests.synth import music_like, write_format


@pytest.fixture(scope="module")
def sqs_cluster(
    postgres: Service, s3: Service, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """API + one worker on SQS (moto) + PostgreSQL + S3, tiny models."""
    workdir = tmp_path_factory.mktemp("sqs-cluster")
    database = create_database(postgres, f"sqs_{uuid.uuid4().hex[:8]}")
    host = s3.url.removeprefix("http://")  # moto serves SQS on the same port as S3
    broker = f"sqs://{S3_ENV['AWS_ACCESS_KEY_ID']}:{S3_ENV['AWS_SECRET_ACCESS_KEY']}@{host}"
    env = cluster_env(workdir, database, broker, s3, model_cache, prefix=f"sqs-{uuid.uuid4().hex[:6]}")
    with running_cluster(workdir, env, s3, ["sqs1"]) as running:
        yield running


def test_the_seed_flow_and_a_text_search_run_over_sqs(sqs_cluster: Cluster) -> None:
    client = sqs_cluster.client
    song = write_format(sqs_cluster.workdir / "song.wav", music_like(6.0, 32_000, seed=5), 32_000, "wav16")
    response = upload(client, song)
    assert response.status_code == 201, response.text
    audio_id = response.json()["audio_id"]
    assert wait_for_embedding(client, audio_id, timeout=120).status_code == 200
    assert len(client.get(f"/api/embedding/{audio_id}").json()["embedding"]) == 512
    found = client.get("/api/search", params={"q": "calm piano"})
    assert found.status_code == 200, found.text
    assert audio_id in [match["audio_id"] for match in found.json()["results"]]
    generated = client.post(f"/api/generate/{audio_id}", json={"duration": 5, "seed": 2})
    assert generated.status_code == 202, generated.text
    generation_id = generated.json()["generation_id"]
    assert poll_status(client, generation_id, timeout=180)[-1]["status"] == "completed"
    download = client.get(f"/api/download/{generation_id}")
    assert download.status_code == 200 and download.content[:4] == b"RIFF"
    assert [key for key in sqs_cluster.objects("generated") if generation_id in key] != []
    assert "motif.generate" in sqs_cluster.workers["sqs1"].log(1_000_000)  # the job came through SQS
    assert "random-weight test model" not in sqs_cluster.api.log(1_000_000)  # the API never loaded a model
