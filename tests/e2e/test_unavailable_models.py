"""With no model to load (offline, empty cache): the server starts, says why, and jobs fail with that reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import upload
from tests.e2e.server import Server, poll_status, server_env
from tests.service.conftest import wait_until

GENERATION_MODEL = "facebook/musicgen-small"
EMBEDDING_MODEL = "laion/clap-htsat-unfused"


@pytest.fixture(scope="module")
def offline_server(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("offline")
    env = server_env(workdir / "data", model_cache, GENERATION_MODEL=GENERATION_MODEL, EMBEDDING_MODEL=EMBEDDING_MODEL,
                     HF_HOME=str(workdir / "empty-hf-cache"), EMBEDDING_WAIT_SECONDS="20")  # fmt: skip
    running = Server(workdir, env).start(ready=False)
    yield running
    running.close()


def test_health_says_which_model_is_missing_and_why(offline_server: Server) -> None:
    client = offline_server.client

    def tried() -> dict[str, object] | None:  # the workers try to load at start-up, in the background
        health = client.get("/api/health").json()
        return health if all(m["state"] == "error" for m in health["models"]) else None

    health = wait_until(tried, timeout=60, what="the start-up load attempts")
    assert not health["ready"] and health["status"] == "degraded" and all(health["workers"].values())
    details = {m["model_id"]: m["detail"] for m in health["models"]}
    assert set(details) == {GENERATION_MODEL, EMBEDDING_MODEL} and all(details.values())


def test_uploads_work_and_jobs_that_need_a_model_fail_with_the_reason(offline_server: Server, song: Path) -> None:
    client = offline_server.client
    created = upload(client, song)
    assert created.status_code == 201  # decoding and analysis need no model
    audio_id = created.json()["audio_id"]

    embedding = client.get(f"/api/embedding/{audio_id}")
    assert embedding.status_code == 503 and EMBEDDING_MODEL in embedding.json()["detail"]
    assert client.get(f"/api/search/similar/{audio_id}").status_code == 503
    search = client.get("/api/search", params={"q": "piano"})
    assert search.status_code == 503 and EMBEDDING_MODEL in search.json()["detail"]

    generation = client.post(f"/api/generate/{audio_id}", json={"duration": 5})
    assert generation.status_code == 202
    final = poll_status(client, generation.json()["generation_id"], timeout=60)[-1]
    assert final["status"] == "failed" and final["error_code"] == "model_unavailable"
    assert GENERATION_MODEL in final["error"]
    assert client.get(f"/api/download/{final['generation_id']}").status_code == 409


def test_no_answer_shows_a_server_path(offline_server: Server, song: Path) -> None:
    """The reasons name the model and the fix, but not where the server keeps its files (…/hub at most)."""
    client = offline_server.client
    audio_id = upload(client, song).json()["audio_id"]
    generation = client.post(f"/api/generate/{audio_id}", json={"duration": 5}).json()["generation_id"]
    poll_status(client, generation, timeout=60)
    answers = [client.get("/api/health"), client.get(f"/api/embedding/{audio_id}"),
               client.get("/api/search", params={"q": "piano"}), client.get(f"/api/status/{generation}"),
               client.get(f"/api/download/{generation}")]  # fmt: skip
    assert "could not be loaded from the Hugging Face cache (…/hub)" in answers[1].json()["detail"]
    for answer in answers:
        assert str(offline_server.workdir) not in answer.text and "/empty-hf-cache/" not in answer.text, answer.text
