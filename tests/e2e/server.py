"""A real Motif server in a subprocess on a free loopback port, started the way start.sh starts it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from motif.config import Settings
from tests.service.conftest import wait_until

START_TIMEOUT = 120.0  # seconds: imports plus building the tiny models on a cold cache, on a loaded box


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(data_dir: Path, model_cache: Path, **overrides: str) -> dict[str, str]:
    """The environment of a test server: tiny models, one torch thread, offline, its own DATA_DIR.

    Motif settings inherited from the developer's shell (PORT, DATABASE_URL, ...) are dropped.
    """
    own = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in own and not k.startswith(("MOTIF_", "PYTEST_"))}
    env.update(GENERATION_MODEL="tiny", EMBEDDING_MODEL="tiny", MODEL_CACHE_DIR=str(model_cache), DEVICE="cpu",
               NUM_THREADS="1", ALLOW_MODEL_DOWNLOAD="false", HF_HUB_OFFLINE="1", DATA_DIR=str(data_dir),
               LOG_LEVEL="INFO", OMP_NUM_THREADS="1")  # fmt: skip
    env.update(overrides)
    return env


class Server:
    """`python -m motif.cli serve` (what start.sh runs) with its log in a file; restartable on the same data."""

    def __init__(self, workdir: Path, env: dict[str, str], cmd: list[str] | None = None) -> None:
        self.workdir, self.env = workdir, env
        self.port = free_port()
        self.cmd = cmd or [sys.executable, "-m", "motif.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=30.0)

    def start(self, ready: bool = True) -> Server:
        """Start and wait until /api/health answers (and, with `ready`, every model is loaded)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it for its whole life
        self.proc = subprocess.Popen(self.cmd, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(lambda: self._health(ready), timeout=START_TIMEOUT, interval=0.2, what=f"the server\n{self.log()}")
        return self

    def _health(self, ready: bool) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
        try:
            response = self.client.get("/api/health", timeout=2.0)
        except httpx.TransportError:
            return False
        return response.status_code == 200 and (response.json()["ready"] or not ready)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        self.client.close()

    def log(self, n_chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n_chars:] if self.log_path.exists() else ""


def poll_status(client: httpx.Client, generation_id: str, timeout: float = 120.0) -> list[dict[str, object]]:
    """Every status seen until the generation is final (polled with a deadline, not a sleep)."""
    seen: list[dict[str, object]] = []

    def final() -> bool:
        response = client.get(f"/api/status/{generation_id}")
        assert response.status_code == 200, response.text
        seen.append(response.json())
        return seen[-1]["status"] in ("completed", "failed", "cancelled")

    wait_until(final, timeout=timeout, interval=0.1, what=f"generation {generation_id}")
    return seen


def wait_for_embedding(client: httpx.Client, audio_id: str, timeout: float = 60.0) -> httpx.Response:
    """GET /api/embedding until it is not 202."""
    return wait_until(lambda: (r := client.get(f"/api/embedding/{audio_id}")).status_code != 202 and r,
                      timeout=timeout, what=f"the embedding of {audio_id}")  # fmt: skip


def sse_events(client: httpx.Client, generation_id: str, last_id: str | None = None) -> Iterator[dict[str, Any]]:
    """The SSE events as they arrive ({"id", "event", "data"}), until the server ends the stream. The stream is
    open once the first event is taken, and stays open while the iterator lives."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    current: dict[str, Any] = {}
    with client.stream("GET", f"/api/generations/{generation_id}/events", headers=headers, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "data" in current:
                    yield current
                current = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                current[field] = json.loads(value) if field == "data" else value


def read_events(client: httpx.Client, generation_id: str, last_id: str | None = None) -> list[dict[str, Any]]:
    """Every SSE event until the server ends the stream: [{"id", "event", "data"}]."""
    return list(sse_events(client, generation_id, last_id))
