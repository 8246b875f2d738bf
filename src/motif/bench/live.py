"""Time to first audio over HTTP: POST /api/generate, then GET /api/generations/{id}/stream until the first
PCM bytes arrive, against a real server (a subprocess) with the bench's models loaded and warmed up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import numpy as np

WAV_HEADER_BYTES = 44
READY_TIMEOUT = 600.0  # seconds: loading musicgen-small-shaped weights on a busy 2-core box


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


def time_to_first_audio(settings_env: dict[str, str], seconds: float, source: np.ndarray) -> dict[str, Any]:
    """Serve with settings_env, upload `source` (mono float32 at 32 kHz), warm up, then time one stream."""
    from motif.audio import encode_audio

    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "motif.service.api.app:create_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env={**os.environ, **settings_env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            _wait_ready(client, process)
            files = {"file": ("bench.wav", encode_audio(source, 32_000, "wav"), "audio/wav")}
            uploaded = client.post("/api/upload", files=files)
            uploaded.raise_for_status()
            audio_id = uploaded.json()["audio_id"]
            _stream_once(client, audio_id, 5.0)  # warm-up: kernels, caches, the first prompt encoding
            return _stream_once(client, audio_id, seconds)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
