"""Kill -9 at the worst moments, restart on the same data: nothing stuck, no upload lost, no result lost."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import upload
from tests.e2e.server import Server, poll_status, server_env, wait_for_embedding
from tests.service.conftest import wait_until


@pytest.fixture
def own_server(model_cache: Path, tmp_path: Path) -> Iterator[Server]:
    """A server of its own: these tests kill it."""
    running = Server(tmp_path, server_env(tmp_path / "data", model_cache)).start()
    yield running
    running.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wait_progress(client: httpx.Client, generation_id: str, at_least: float) -> None:
    def running() -> bool:
        status = client.get(f"/api/status/{generation_id}").json()
        assert status["status"] in ("queued", "processing"), status
        return status["status"] == "processing" and status["progress"] >= at_least

    wait_until(running, timeout=60, what=f"generation {generation_id} to pass {at_least}%")


def test_sigkill_mid_generation_then_restart_completes_it_or_fails_it_with_a_reason(
    own_server: Server, song: Path
) -> None:
    server, client = own_server, own_server.client
    data = Path(server.env["DATA_DIR"])
    audio_id = upload(client, song).json()["audio_id"]
    assert wait_for_embedding(client, audio_id).status_code == 200
    finished = client.post(f"/api/generate/{audio_id}", json={"duration": 5, "seed": 1}).json()["generation_id"]
    assert poll_status(client, finished)[-1]["status"] == "completed"
    result = client.get(f"/api/download/{finished}").content
    stored = {p: _sha(p) for p in (data / "uploads").iterdir()}

    interrupted = client.post(f"/api/generate/{audio_id}", json={"duration": 30, "seed": 2}).json()["generation_id"]
    _wait_progress(client, interrupted, 10)
    server.kill()  # SIGKILL: no shutdown code runs
    server.start()
    final = poll_status(client, interrupted)[-1]
    assert final["status"] == "completed" and final["attempts"] == 2, final
    assert len(client.get(f"/api/download/{interrupted}").content) == 30 * 32_000 * 2 + 44
    assert client.get(f"/api/download/{finished}").content == result  # the earlier result is intact
    assert {p: _sha(p) for p in (data / "uploads").iterdir()} == stored  # so is the upload
    assert client.get(f"/api/embedding/{audio_id}").status_code == 200

    doomed = client.post(f"/api/generate/{audio_id}", json={"duration": 30}).json()["generation_id"]
    _wait_progress(client, doomed, 10)
    server.kill()
    server.env["MAX_JOB_ATTEMPTS"] = "1"  # it has had its one attempt
    server.start()
    final = client.get(f"/api/status/{doomed}").json()
    assert final["status"] == "failed" and final["error_code"] == "interrupted" and "stopped" in final["error"]
    assert client.get("/api/health").json()["queue"]["generation"] == {"queued": 0, "processing": 0}


def test_sigkill_during_an_upload_leaves_no_partial_file_or_row(own_server: Server, song: Path) -> None:
    server, client = own_server, own_server.client
    uploads = Path(server.env["DATA_DIR"]) / "uploads"
    kept = upload(client, song).json()["audio_id"]
    before = set(uploads.iterdir())
    sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="slow.mp3"\r\n\r\n'
        yield song.read_bytes()[:50_000]
        sent.set()
        for _ in range(600):  # the rest trickles in: a slow client, still sending when the server dies
            time.sleep(0.05)
            yield b"\0" * 1024

    def send() -> None:
        try:
            with httpx.Client(timeout=60) as slow:
                slow.post(f"{server.url}/api/upload", content=slow_body(),
                          headers={"content-type": "multipart/form-data; boundary=x"})  # fmt: skip
        except httpx.HTTPError:
            pass  # the server died under it, as intended

    sender = threading.Thread(target=send)
    sender.start()
    sent.wait(30)
    partial = wait_until(lambda: [p for p in uploads.iterdir() if p.name.startswith(".tmp-")], timeout=30,
                         what="the partial upload on disk")  # fmt: skip
    server.kill()
    sender.join(60)
    assert all(p.exists() for p in partial)  # the dead process could not clean up ...
    server.start()
    assert set(uploads.iterdir()) == before  # ... the next start did
    listed = client.get("/api/audio").json()
    assert listed["total"] == 1 and listed["items"][0]["audio_id"] == kept
