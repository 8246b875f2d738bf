"""Time to first audio over HTTP: POST /api/generate, then GET /api/generations/{id}/stream until the first
PCM bytes arrive, against a real server (a subprocess) with the bench's models loaded and warmed up."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import httpx
import numpy as np

from motif.bench.machine import start_server, stop_server

WAV_HEADER_BYTES = 44
READY_TIMEOUT = 600.0  # seconds: loading musicgen-small-shaped weights on a busy 2-core box


def _wait_ready(client: httpx.Client, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if client.get("/api/health", timeout=2).json().get("ready"):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not load its models in time")


def _stream_once(client: httpx.Client, audio_id: str, seconds: float) -> dict[str, float]:
    """One continuation: seconds from the POST to the first audio bytes, and to the end of the stream."""
    start = time.perf_counter()
    posted = client.post(f"/api/generate/{audio_id}", json={"duration": seconds, "mode": "continuation", "seed": 3})
    posted.raise_for_status()
    generation_id = posted.json()["generation_id"]
    received, first = 0, None
    with client.stream("GET", f"/api/generations/{generation_id}/stream", timeout=600) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            received += len(chunk)
            if first is None and received > WAV_HEADER_BYTES:
                first = time.perf_counter() - start
    end = time.perf_counter() - start
    return {"ttfa_s": first if first is not None else float("nan"), "stream_end_s": end,
            "stream_audio_s": (received - WAV_HEADER_BYTES) / 2 / 32_000}  # fmt: skip


def _upload(client: httpx.Client, source: np.ndarray) -> str:
    from motif.audio import encode_audio

    files = {"file": ("bench.wav", encode_audio(source, 32_000, "wav"), "audio/wav")}
    uploaded = client.post("/api/upload", files=files)
    uploaded.raise_for_status()
    return str(uploaded.json()["audio_id"])


def _wait_processed(client: httpx.Client, audio_id: str) -> None:
    """Until the upload's ingest is done (its embedding answers): what a person on the page sees before asking."""
    deadline = time.monotonic() + READY_TIMEOUT
    while client.get(f"/api/embedding/{audio_id}").status_code == 202:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the upload {audio_id} was not processed in time")
        time.sleep(0.1)


def time_to_first_audio(settings_env: dict[str, str], seconds: float, source: np.ndarray) -> dict[str, Any]:
    """Serve with settings_env, warm up, then time streams of `source` (mono float32 at 32 kHz) and of a shifted
    copy: `ttfa_s` a new upload's first continuation once it is processed, `ttfa_again_s` another of it, and
    `ttfa_at_upload_s` a new upload's first continuation asked the moment the upload answers."""
    process, port = start_server(settings_env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            _wait_ready(client, process)
            # Warm-up on other audio (kernels, allocator, the first request), so the timed runs are new uploads.
            _stream_once(client, _upload(client, source[::-1].copy()), 5.0)
            at_upload = _stream_once(client, _upload(client, np.roll(source, source.shape[0] // 3)), seconds)
            audio_id = _upload(client, source)
            _wait_processed(client, audio_id)
            first = _stream_once(client, audio_id, seconds)
            again = _stream_once(client, audio_id, seconds)
            return {**first, "ttfa_again_s": again["ttfa_s"], "ttfa_at_upload_s": at_upload["ttfa_s"]}
    finally:
        stop_server(process, timeout=30)
