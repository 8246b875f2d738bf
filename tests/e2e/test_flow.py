"""The seed's flow and every route around it, over real HTTP against a real server with tiny models."""

from __future__ import annotations

import io
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.e2e.conftest import upload
from tests.e2e.server import Server, poll_status, wait_for_embedding
from tests.synth import music_like, sine, write_format

ROOT = Path(__file__).resolve().parents[2]


def test_the_seed_flow_upload_embedding_generate_poll_download(client: httpx.Client, song: Path) -> None:
    response = upload(client, song)
    assert response.status_code == 201, response.text
    audio = response.json()
    assert set(audio) >= {"audio_id", "filename", "duration", "sample_rate", "analysis"}
    assert audio["filename"] == "song.mp3" and abs(audio["duration"] - 12.0) < 0.1 and audio["sample_rate"] == 44_100
    assert audio["analysis"]["tempo_bpm"] is not None and audio["analysis"]["key"] == "C"

    embedding = client.get(f"/api/embedding/{audio['audio_id']}")  # waits for the job: no 202 on an idle server
    assert embedding.status_code == 200, embedding.text
    body = embedding.json()
    vector = np.array(body["embedding"])
    assert body["dim"] == 512 and vector.shape == (512,) and body["model"] == "tiny"
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-4

    params = {"duration": 5, "temperature": 1.0, "top_k": 250, "top_p": 0.0, "cfg_coef": 3.0, "seed": 7}
    created = client.post(f"/api/generate/{audio['audio_id']}", json=params)
    assert created.status_code == 202, created.text
    assert created.json()["status"] == "queued" and created.headers["location"].startswith("/api/status/")
    generation_id = created.json()["generation_id"]

    seen = poll_status(client, generation_id)
    progress = [s["progress"] for s in seen]
    assert progress == sorted(progress) and all(0 <= p <= 100 for p in progress)
    final = seen[-1]
    assert final["status"] == "completed" and final["progress"] == 100 and final["error"] is None
    assert final["seed"] == 7 and final["mode"] == "continuation" and -1 <= final["similarity"] <= 1
    assert final["created_at"] <= final["started_at"] <= final["finished_at"] and final["queue_position"] is None

    download = client.get(f"/api/download/{generation_id}")
    assert download.status_code == 200 and download.headers["content-type"] == "audio/wav"
    assert download.headers["content-disposition"] == f'attachment; filename="song-motif-{generation_id[:8]}.wav"'
    samples, rate = sf.read(io.BytesIO(download.content), dtype="float32")
    assert rate == 32_000 and samples.shape == (5 * 32_000,) and np.isfinite(samples).all()

    ranged = client.get(f"/api/download/{generation_id}", headers={"Range": "bytes=0-43"})
    assert ranged.status_code == 206 and ranged.content == download.content[:44]
    assert ranged.headers["content-range"] == f"bytes 0-43/{len(download.content)}"


def test_flac_and_mp3_results_generated_in_one_batch(client: httpx.Client, song: Path) -> None:
    audio_id = upload(client, song).json()["audio_id"]
    ids = {fmt: client.post(f"/api/generate/{audio_id}", json={"duration": 5, "format": fmt}).json()["generation_id"]
           for fmt in ("flac", "mp3")}  # fmt: skip
    for fmt, generation_id in ids.items():
        assert poll_status(client, generation_id)[-1]["status"] == "completed"
        download = client.get(f"/api/download/{generation_id}")
        assert download.headers["content-type"] == {"flac": "audio/flac", "mp3": "audio/mpeg"}[fmt]
        assert download.headers["content-disposition"].endswith(f'.{fmt}"')
        info = sf.info(io.BytesIO(download.content))
        assert info.samplerate == 32_000 and abs(info.duration - 5.0) < 0.1


def test_status_answers_fast_progress_moves_and_embeddings_go_on_while_generating(
    client: httpx.Client, song: Path
) -> None:
    audio_id = upload(client, song).json()["audio_id"]
    generation_id = client.post(f"/api/generate/{audio_id}", json={"duration": 60, "seed": 1}).json()["generation_id"]
    latencies, progress = [], []
    embedded_while_generating = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        started = time.perf_counter()
        status = client.get(f"/api/status/{generation_id}").json()
        latencies.append(time.perf_counter() - started)
        if status["status"] != "queued" and status["status"] != "processing":
            break
        if status["status"] == "processing":
            progress.append(status["progress"])
            if not embedded_while_generating and status["progress"] > 10:
                other = upload(client, song, "during.mp3").json()["audio_id"]
                embedding = client.get(f"/api/embedding/{other}")
                embedded_while_generating = embedding.status_code == 200 and _processing(client, generation_id)
        time.sleep(0.05)  # a client's polling interval, not synchronisation
    assert status["status"] == "completed"
    assert embedded_while_generating  # embeddings have their own worker: not stuck behind a generation
    health = client.get("/api/health").json()
    assert health["queue"]["generation"] == {"queued": 0, "processing": 0}
    moving = sorted({p for p in progress if 0 < p < 100})
    assert len(moving) >= 3, progress  # persisted as it goes, not only at the end
    assert statistics.median(latencies) < 0.05 and max(latencies) < 1.0, (statistics.median(latencies), max(latencies))


def _processing(client: httpx.Client, generation_id: str) -> bool:
    return bool(client.get(f"/api/status/{generation_id}").json()["status"] == "processing")


def test_concurrent_uploads_all_land_and_get_embeddings(client: httpx.Client, audio_dir: Path) -> None:
    paths = [write_format(audio_dir / f"c{i}.wav", music_like(6.0, 32_000, seed=10 + i), 32_000, "wav16")
             for i in range(6)]  # fmt: skip
    responses: list[httpx.Response] = []

    def send(path: Path) -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=60) as own:
            responses.append(upload(own, path))

    threads = [threading.Thread(target=send, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in responses) == [201] * 6
    ids = {r.json()["audio_id"] for r in responses}
    assert len(ids) == 6
    for audio_id in ids:
        assert wait_for_embedding(client, audio_id).status_code == 200


def test_library_listing_pagination_and_generation_filter(client: httpx.Client, song: Path) -> None:
    first, second = (upload(client, song, name).json()["audio_id"] for name in ("one.mp3", "two.mp3"))
    page = client.get("/api/audio", params={"limit": 1}).json()
    assert page["total"] >= 2 and page["limit"] == 1 and [a["audio_id"] for a in page["items"]] == [second]
    assert client.get("/api/audio", params={"limit": 1, "offset": 1}).json()["items"][0]["audio_id"] == first
    one = client.get(f"/api/audio/{first}").json()
    assert one["filename"] == "one.mp3" and one["embedding_status"] in ("queued", "processing", "completed")
    generation_id = client.post(f"/api/generate/{first}", json={"duration": 5}).json()["generation_id"]
    listed = client.get("/api/generations", params={"audio_id": first}).json()
    assert [g["generation_id"] for g in listed["items"]] == [generation_id] and listed["total"] == 1
    assert client.get("/api/generations", params={"audio_id": second}).json()["total"] == 0
    assert poll_status(client, generation_id)[-1]["status"] == "completed"
    done = client.get("/api/generations", params={"status": "completed", "limit": 500}).json()
    assert generation_id in {g["generation_id"] for g in done["items"]}


def test_similar_uploads_and_text_search(client: httpx.Client, audio_dir: Path) -> None:
    paths = [write_format(audio_dir / "band.wav", music_like(6.0, 32_000, seed=5), 32_000, "wav16"),
             write_format(audio_dir / "band2.wav", music_like(6.0, 32_000, seed=6), 32_000, "wav16"),
             write_format(audio_dir / "tone.wav", sine(440.0, 6.0), 32_000, "wav16")]  # fmt: skip
    ids = [upload(client, path).json()["audio_id"] for path in paths]
    for audio_id in ids:
        assert wait_for_embedding(client, audio_id).status_code == 200
    similar = client.get(f"/api/search/similar/{ids[0]}", params={"k": 2})
    assert similar.status_code == 200, similar.text
    results = similar.json()["results"]
    scores = [r["score"] for r in results]
    assert len(results) == 2 and ids[0] not in {r["audio_id"] for r in results}
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    text = client.get("/api/search", params={"q": "calm piano", "k": 3}).json()
    assert text["query"] == "calm piano" and len(text["results"]) == 3
    assert client.get("/api/search", params={"q": ""}).status_code == 422


def test_delete_removes_files_embedding_and_generations(server: Server, client: httpx.Client, song: Path) -> None:
    audio_id = upload(client, song).json()["audio_id"]
    assert wait_for_embedding(client, audio_id).status_code == 200
    generation_id = client.post(f"/api/generate/{audio_id}", json={"duration": 5}).json()["generation_id"]
    assert poll_status(client, generation_id)[-1]["status"] == "completed"
    data = Path(server.env["DATA_DIR"])
    owned = [p for p in data.rglob("*") if audio_id in p.name or generation_id in p.name]
    assert len(owned) == 3  # upload, processed copy, result

    assert client.delete(f"/api/audio/{audio_id}").status_code == 204
    for path in (f"/api/audio/{audio_id}", f"/api/embedding/{audio_id}", f"/api/status/{generation_id}",
                 f"/api/download/{generation_id}", f"/api/search/similar/{audio_id}"):  # fmt: skip
        assert client.get(path).status_code == 404, path
    assert client.get("/api/generations", params={"audio_id": audio_id}).json()["total"] == 0
    assert not any(p.exists() for p in owned)
    assert client.delete(f"/api/audio/{audio_id}").status_code == 404


def test_health_reports_models_queue_and_workers(client: httpx.Client) -> None:
    health = client.get("/api/health").json()
    assert health["ready"] and health["status"] == "ok"
    assert {(m["role"], m["model_id"], m["state"]) for m in health["models"]} == {
        ("generation", "tiny", "loaded"), ("embedding", "tiny", "loaded")}  # fmt: skip
    assert set(health["queue"]) == {"embedding", "generation"} and health["workers"] == {
        "embedding": True, "generation": True}  # fmt: skip


def test_the_seed_script_passes_against_the_server(server: Server) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "test_api.py"), "--full", "--url", server.url],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all checks passed" in run.stdout


def test_the_openapi_schema_documents_every_route_and_response(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    expected = {"/api/upload", "/api/embedding/{audio_id}", "/api/generate/{audio_id}", "/api/status/{generation_id}",
                "/api/download/{generation_id}", "/api/health", "/api/audio", "/api/audio/{audio_id}",
                "/api/generations", "/api/generations/{generation_id}/cancel", "/api/search/similar/{audio_id}",
                "/api/search", "/api/generations/{generation_id}/events", "/api/generations/{generation_id}/stream",
                "/api/audio/{audio_id}/peaks", "/api/generations/{generation_id}/peaks", "/api/audio/{audio_id}/file",
                "/api/media-tokens"}  # fmt: skip
    assert set(schema["paths"]) == expected
    upload_body = schema["paths"]["/api/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload_body["schema"]["required"] == ["file"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if code not in ("204", "206", "302"):  # no body: empty, a byte range, a redirect
                    assert response.get("content"), f"{method} {path} {code} has no modelled body"
    _assert_refs_resolve(schema, schema)
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]


def test_the_openapi_schema_passes_a_validator(client: httpx.Client) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(client.get("/openapi.json").json())


def _assert_refs_resolve(node: object, schema: dict[str, object]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            target: object = schema
            for part in ref.removeprefix("#/").split("/"):
                assert isinstance(target, dict) and part in target, f"dangling $ref {ref}"
                target = target[part]
        for value in node.values():
            _assert_refs_resolve(value, schema)
    elif isinstance(node, list):
        for value in node:
            _assert_refs_resolve(value, schema)
