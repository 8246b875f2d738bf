"""Pushed progress (SSE), the live audio stream, waveform peaks, signed media URLs and webhooks, over HTTP
against a real server with tiny models; webhooks land on the test's own receiver on loopback."""

from __future__ import annotations

import io
import json
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.e2e.conftest import upload
from tests.e2e.server import Server, poll_status, read_events, server_env
from tests.service.conftest import wait_until
from tests.synth import music_like, write_format
from tests.webhook_receiver import SECRET, Receiver, receiving, signed_by


@pytest.fixture(scope="module")
def live(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One job at a time (MAX_BATCH_SIZE=1), so a second job waits in the queue with a position."""
    workdir = tmp_path_factory.mktemp("live-server")
    env = server_env(workdir / "data", model_cache, MAX_BATCH_SIZE="1", WEBHOOK_SECRET=SECRET,
                     WEBHOOK_ALLOW_PRIVATE="true", WEBHOOK_MAX_ATTEMPTS="4")  # fmt: skip
    running = Server(workdir, env).start()
    yield running
    running.close()


@pytest.fixture(scope="module")
def audio_id(live: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = write_format(tmp_path_factory.mktemp("live-audio") / "band.wav", music_like(6.0, 32_000, seed=2),
                        32_000, "wav16")  # fmt: skip
    response = upload(live.client, path)
    assert response.status_code == 201, response.text
    return str(response.json()["audio_id"])


def generate(client: httpx.Client, audio_id: str, **params: Any) -> str:
    response = client.post(f"/api/generate/{audio_id}", json={"duration": 5, "seed": 1, **params})
    assert response.status_code == 202, response.text
    return str(response.json()["generation_id"])


def test_events_push_queue_position_progress_and_the_result_then_resume(live: Server, audio_id: str) -> None:
    client = live.client
    first = generate(client, audio_id, duration=15)
    second = generate(client, audio_id, duration=10)  # waits behind the first: MAX_BATCH_SIZE=1
    events = read_events(client, second)
    names = [e["event"] for e in events]
    assert names[0] == "queued" and events[0]["data"]["queue_position"] >= 1, names
    assert names[-1] == "completed" and names.count("completed") == 1
    progress = [e["data"]["progress"] for e in events if e["event"] == "progress"]
    assert progress == sorted(progress) and any(0 < value < 100 for value in progress), progress
    done = events[-1]["data"]
    assert done["download_url"] == f"/api/download/{second}" and done["similarity"] is not None
    assert client.get(f"/api/status/{first}").json()["status"] == "completed"  # it ran first

    resumed = read_events(client, second, last_id=events[1]["id"])  # reconnecting mid-way: only what is newer
    assert [e["event"] for e in resumed] == ["completed"]
    response = client.get(f"/api/generations/{second}/events", headers={"Last-Event-ID": "completed"})
    assert response.status_code == 204  # seen the end: EventSource stops reconnecting
    assert client.get("/api/generations/nope/events").status_code == 404


def test_events_announce_a_cancel_in_the_queue(live: Server, audio_id: str) -> None:
    client = live.client
    running = generate(client, audio_id, duration=30)
    queued = generate(client, audio_id)
    seen: list[list[dict[str, Any]]] = []
    reader = threading.Thread(target=lambda: seen.append(read_events(client, queued)))
    reader.start()
    wait_until(lambda: client.get(f"/api/status/{queued}").json()["queue_position"], what="a queued job")
    assert client.post(f"/api/generations/{queued}/cancel").status_code == 200
    reader.join(60)
    assert not reader.is_alive(), "the event stream did not end at the cancel"
    assert seen[0][-1]["event"] == "cancelled"
    client.post(f"/api/generations/{running}/cancel")
    poll_status(client, running)


def wav_stream(client: httpx.Client, generation_id: str) -> tuple[bytes, bytes, str]:
    """(header, PCM, the job's status when the first PCM bytes arrived)."""
    received, status_at_first = bytearray(), ""
    with client.stream("GET", f"/api/generations/{generation_id}/stream", timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
        for chunk in response.iter_bytes():
            if len(received) <= 44 < len(received) + len(chunk):
                status_at_first = client.get(f"/api/status/{generation_id}").json()["status"]
            received += chunk
    return bytes(received[:44]), bytes(received[44:]), status_at_first


def test_stream_plays_the_result_while_it_is_generated(live: Server, audio_id: str) -> None:
    client = live.client
    generation_id = generate(client, audio_id, duration=10, seed=5)
    header, pcm, status_at_first = wav_stream(client, generation_id)
    assert status_at_first == "processing"  # audio arrived before the job completed
    riff, riff_size, wave, fmt, _, tag, channels, rate, _, _, bits, data, data_size = struct.unpack(
        "<4sI4s4sIHHIIHH4sI", header)  # fmt: skip
    assert (riff, wave, fmt, data, tag, channels, rate, bits) == (b"RIFF", b"WAVE", b"fmt ", b"data", 1, 1, 32_000, 16)
    assert riff_size == data_size == 0xFFFFFFFF  # open-ended: the length was not known when it started
    streamed = np.frombuffer(pcm, "<i2").astype(np.float64) / 32767
    assert streamed.size == 10 * 32_000
    final, rate = sf.read(io.BytesIO(client.get(f"/api/download/{generation_id}").content), dtype="float64")
    assert rate == 32_000 and final.shape == streamed.shape
    # The final file alone is loudness-normalised (a gain, and a limiter only on peaks over -1 dBTP):
    gain = float(final @ streamed / (streamed @ streamed))
    residual = final - gain * streamed
    assert float(np.sqrt(np.mean(residual**2) / np.mean(final**2))) < 0.01  # within 1% RMS, 16-bit rounding

    after = client.get(f"/api/generations/{generation_id}/stream")  # a finished job: its final file
    assert after.status_code == 200 and after.content == client.get(f"/api/download/{generation_id}").content


def test_peaks_and_media_urls(live: Server, audio_id: str) -> None:
    client = live.client
    peaks = client.get(f"/api/audio/{audio_id}/peaks", params={"n": 50}).json()
    assert len(peaks["peaks"]) == 50 and peaks["duration"] == pytest.approx(6.0, abs=0.01)
    assert all(-1 <= lo <= hi <= 1 for lo, hi in peaks["peaks"]) and max(hi for _, hi in peaks["peaks"]) > 0.1
    assert client.get(f"/api/audio/{audio_id}/peaks", params={"n": 5}).status_code == 422
    assert client.get("/api/audio/nope/peaks").status_code == 404
    generation_id = generate(client, audio_id)
    poll_status(client, generation_id)
    result = client.get(f"/api/generations/{generation_id}/peaks", params={"n": 100}).json()
    assert len(result["peaks"]) == 100 and result["duration"] == pytest.approx(5.0, abs=0.01)

    original = client.get(f"/api/audio/{audio_id}/file")
    assert original.status_code == 200 and original.headers["content-type"] == "audio/wav"
    assert original.content[:4] == b"RIFF"
    signed = client.post("/api/media-tokens", json={"path": f"/api/audio/{audio_id}/file"})
    assert signed.status_code == 200 and "?token=" in signed.json()["url"]
    assert client.get(signed.json()["url"]).content == original.content
    assert client.post("/api/media-tokens", json={"path": "/api/audio"}).status_code == 422


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[Receiver]]]:
    with receiving(failures=2) as running:
        yield running


def test_webhook_is_signed_retried_and_carries_the_final_status(
    live: Server, audio_id: str, receiver: tuple[str, type[Receiver]]
) -> None:
    url, handler = receiver
    generation_id = generate(live.client, audio_id, callback_url=url)
    poll_status(live.client, generation_id)
    wait_until(lambda: len(handler.received) >= 3, timeout=30, what="the webhook's third attempt")
    assert len(handler.received) == 3  # two 500s, then a success: no more attempts
    assert all(signed_by(SECRET, headers, body) for headers, body in handler.received)
    status = json.loads(handler.received[-1][1])
    assert status["generation_id"] == generation_id and status["status"] == "completed"
    assert status["download_url"] == f"/api/download/{generation_id}"
    assert handler.received[-1][0]["X-Motif-Event"] == "generation.completed"


def test_callback_urls_are_validated(live: Server, audio_id: str) -> None:
    for bad in ("ftp://127.0.0.1/hook", "http://user:pw@127.0.0.1/", "http://no-such-host.invalid/hook"):
        response = live.client.post(f"/api/generate/{audio_id}", json={"duration": 5, "callback_url": bad})
        assert response.status_code == 422, bad
        assert "callback_url" in response.json()["detail"]
