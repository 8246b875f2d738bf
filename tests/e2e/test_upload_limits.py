"""Slow and simultaneous uploads through a real server: 408 for a client that stalls, 503 + Retry-After past
MAX_CONCURRENT_UPLOADS, and nothing left behind either way."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from motif.service.blobs import TEMP_PREFIX
from tests.e2e.conftest import upload
from tests.e2e.server import Server, server_env
from tests.service.conftest import wait_until
from tests.synth import music_like, write_format

IDLE_TIMEOUT = 3  # seconds (UPLOAD_IDLE_TIMEOUT)
BOUNDARY = "motif-test-boundary"


@pytest.fixture(scope="module")
def strict_server(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("strict-server")
    env = server_env(workdir / "data", model_cache, UPLOAD_IDLE_TIMEOUT=str(IDLE_TIMEOUT), MAX_CONCURRENT_UPLOADS="1")
    running = Server(workdir, env).start(ready=False)
    yield running
    running.close()


@pytest.fixture(scope="module")
def small_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_format(tmp_path_factory.mktemp("small") / "small.wav", music_like(2.0, 16_000), 16_000, "wav16")


def begin_upload(server: Server, n_declared: int = 1_000_000) -> socket.socket:
    """An upload whose headers and first bytes are sent; the rest of the declared body is not (yet)."""
    part = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="slow.wav"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()  # fmt: skip
    head = (f"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(part) + n_declared}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n").encode()  # fmt: skip
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(head + part + b"\0" * 1000)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 60 s pass)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
        if b"\r\n\r\n" in received and received.endswith(b"}"):
            break
    return received


def staged_files(server: Server) -> list[Path]:
    return [p for p in (Path(server.env["DATA_DIR"]) / "uploads").iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_a_client_that_stops_sending_gets_408_and_leaves_nothing_behind(strict_server: Server) -> None:
    with begin_upload(strict_server) as sock:
        answer = read_answer(sock)  # the server answers on its own, UPLOAD_IDLE_TIMEOUT s after the last byte

    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"UPLOAD_IDLE_TIMEOUT" in answer
    wait_until(lambda: not staged_files(strict_server), timeout=30, what="the partial upload to be removed")


def test_uploads_past_the_concurrency_cap_get_503_with_retry_after(strict_server: Server, small_wav: Path) -> None:
    stop = threading.Event()
    sock = begin_upload(strict_server, n_declared=10_000_000)

    def trickle() -> None:  # slow but not idle: it keeps the only upload slot
        while not stop.wait(IDLE_TIMEOUT / 4):
            sock.sendall(b"\0" * 100)

    sender = threading.Thread(target=trickle)
    sender.start()
    try:  # the handler stages the body once it holds the slot
        wait_until(lambda: staged_files(strict_server), timeout=30, what="the slow upload to take the slot")
        refused = wait_until(lambda: (r := upload(strict_server.client, small_wav)).status_code == 503 and r,
                             timeout=30, what="an upload refused while the slot is taken")  # fmt: skip
    finally:
        stop.set()
        sender.join()
        sock.close()

    assert int(refused.headers["Retry-After"]) > 0
    assert "MAX_CONCURRENT_UPLOADS" in refused.json()["detail"]
    # The slot comes back when the slow client goes away.
    accepted = wait_until(lambda: (r := upload(strict_server.client, small_wav)).status_code == 201 and r,
                          timeout=30, interval=0.2, what="the slot to be released")  # fmt: skip
    assert accepted.json()["duration"] == pytest.approx(2.0, abs=0.01)
    wait_until(lambda: not staged_files(strict_server), timeout=30, what="the abandoned upload to be removed")


def test_a_normal_upload_is_unaffected(strict_server: Server, small_wav: Path) -> None:
    with httpx.Client(base_url=strict_server.url, timeout=60) as client:
        assert upload(client, small_wav).status_code == 201
