"""One shared server for most end-to-end tests (tiny models), plus audio files the tests make."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Server, server_env
from tests.synth import music_like, write_format

MAX_FILE_SIZE = 2_000_000  # bytes: small, so the 413 test sends little
MAX_DURATION = 40.0  # seconds


@pytest.fixture(scope="package")  # stopped when the e2e tests are done, not at the end of the session
def server(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("server")
    env = server_env(workdir / "data", model_cache, MAX_FILE_SIZE=str(MAX_FILE_SIZE), MAX_DURATION=str(MAX_DURATION),
                     EMBEDDING_WAIT_SECONDS="20", MAX_BATCH_SIZE="4")  # fmt: skip
    running = Server(workdir, env).start()
    yield running
    running.close()


@pytest.fixture
def client(server: Server) -> httpx.Client:
    return server.client


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="session")
def song(audio_dir: Path) -> Path:
    """12 s of a little band at 44.1 kHz, as MP3 (most uploads are)."""
    return write_format(audio_dir / "song.mp3", music_like(12.0, 44_100, seed=1), 44_100, "mp3")


def upload(client: httpx.Client, path: Path, name: str | None = None) -> httpx.Response:
    with open(path, "rb") as file:
        return client.post("/api/upload", files={"file": (name or path.name, file, "application/octet-stream")})
