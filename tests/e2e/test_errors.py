"""Every error answer of the API: the right status, a JSON {"detail"}, and nothing left behind."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import MAX_DURATION, MAX_FILE_SIZE, upload
from tests.e2e.server import Server, poll_status
from tests.service.conftest import wait_until
from tests.synth import music_like, noise, write_format


def _stored_files(server: Server) -> set[Path]:
    data = Path(server.env["DATA_DIR"])
    return {p for area in ("uploads", "processed") for p in (data / area).iterdir()}


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, int]]:
    """name -> (file, expected status)."""
    text = tmp_path / "notes.mp3"
    text.write_text("these are not the sounds you are looking for\n" * 50)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    flac = write_format(tmp_path / "ok.flac", music_like(6.0, 32_000, seed=1), 32_000, "flac").read_bytes()
    damaged = tmp_path / "damaged.flac"
    damaged.write_bytes(bytes(b ^ 0x5A if i > 200 and i % 7 == 0 else b for i, b in enumerate(flac)))
    nans = np.full(32_000 * 3, np.nan, dtype=np.float32)
    nans[::2] = 0.1
    return {
        "text": (text, 415),
        "video without sound": (write_format(tmp_path / "v.mp4", np.zeros(32_000), 32_000, "mp4_video_only"), 415),
        "empty": (empty, 422),
        "too short": (write_format(tmp_path / "short.wav", noise(0.3, 32_000), 32_000, "wav16"), 422),
        "damaged": (damaged, 422),
        "not finite": (write_format(tmp_path / "nan.wav", nans, 32_000, "float"), 422),
        "too long": (write_format(tmp_path / "long.wav", noise(MAX_DURATION + 5, 8_000), 8_000, "wav8"), 413),
        "too large": (write_format(tmp_path / "big.wav", noise(40.0, 32_000), 32_000, "wav16"), 413),
    }


def test_refused_uploads_answer_why_and_leave_no_file_or_row(
    server: Server, client: httpx.Client, tmp_path: Path
) -> None:
    before_files, before_total = _stored_files(server), client.get("/api/audio").json()["total"]
    for name, (path, expected) in _bad_files(tmp_path).items():
        if name == "too large":
            assert path.stat().st_size > MAX_FILE_SIZE
        response = upload(client, path)
        assert response.status_code == expected, (name, response.text)
        assert isinstance(response.json()["detail"], str) and response.json()["detail"], name
    assert _stored_files(server) == before_files
    assert client.get("/api/audio").json()["total"] == before_total


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [({"content": b"raw bytes", "headers": {"content-type": "audio/wav"}}, 422),
     ({"files": {"audio": ("a.wav", b"RIFF")}}, 422),
     ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 422)],
)  # fmt: skip
def test_malformed_upload_requests(client: httpx.Client, kwargs: dict[str, object], status: int) -> None:
    response = client.post("/api/upload", **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status and "detail" in response.json()


def test_an_oversized_upload_is_refused_from_its_content_length_before_the_body(server: Server) -> None:
    head = (f"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {10**12}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n\r\n")  # fmt: skip
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode())  # a terabyte announced, none of it sent
        reply = b""
        while b"MAX_FILE_SIZE" not in reply and (chunk := sock.recv(4096)):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b"MAX_FILE_SIZE" in reply


def test_a_chunked_upload_is_cut_off_at_the_limit(server: Server, client: httpx.Client) -> None:
    before = _stored_files(server)

    def body() -> Iterator[bytes]:  # no Content-Length: only counting while streaming can stop it
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
        for _ in range(MAX_FILE_SIZE // 65_536 + 10):
            yield b"\0" * 65_536
        yield b"\r\n--x--\r\n"

    try:
        headers = {"content-type": "multipart/form-data; boundary=x"}
        response = client.post("/api/upload", content=body(), headers=headers)
        assert response.status_code == 413
    except httpx.WriteError:
        pass  # the server answered 413 and closed while we were still sending
    assert _stored_files(server) == before


BAD_PARAMS = [("duration", 4.9), ("duration", 121), ("temperature", 0.05), ("temperature", 2.1), ("top_k", -1),
              ("top_k", 501), ("top_p", -0.1), ("top_p", 1.01), ("cfg_coef", 0.9), ("cfg_coef", 10.5),
              ("mode", "karaoke"), ("format", "ogg"), ("seed", -1), ("duration", "long"),
              ("prompt", "x" * 1001)]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), BAD_PARAMS)
def test_out_of_range_generation_parameters_are_422_naming_the_field(
    client: httpx.Client, song: Path, field: str, value: object
) -> None:
    audio_id = _uploaded(client, song)
    response = client.post(f"/api/generate/{audio_id}", json={"duration": 10, field: value})
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["body", field]]


def test_a_body_that_is_not_json_is_422(client: httpx.Client, song: Path) -> None:
    response = client.post(f"/api/generate/{_uploaded(client, song)}", content=b"duration=10",
                           headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/embedding/{}"), ("POST", "/api/generate/{}"), ("GET", "/api/status/{}"),
     ("GET", "/api/download/{}"), ("POST", "/api/generations/{}/cancel"), ("GET", "/api/audio/{}"),
     ("DELETE", "/api/audio/{}"), ("GET", "/api/search/similar/{}"), ("GET", "/api/nothing/{}")],
)  # fmt: skip
def test_unknown_ids_are_404(client: httpx.Client, method: str, path: str) -> None:
    response = client.request(method, path.format("0123456789abcdef0123456789abcdef"))
    assert response.status_code == 404 and "detail" in response.json()


def test_download_and_cancel_follow_the_job_state(client: httpx.Client, song: Path) -> None:
    audio_id = _uploaded(client, song)
    generation_id = client.post(f"/api/generate/{audio_id}", json={"duration": 60}).json()["generation_id"]
    early = client.get(f"/api/download/{generation_id}")
    assert early.status_code == 409 and "poll /api/status" in early.json()["detail"]
    wait_until(lambda: client.get(f"/api/status/{generation_id}").json()["status"] == "processing", what="start")
    cancel = client.post(f"/api/generations/{generation_id}/cancel")
    assert cancel.status_code == 202 and cancel.json()["cancel_requested"]
    final = poll_status(client, generation_id, timeout=30)[-1]
    assert final["status"] == "cancelled" and final["finished_at"] is not None
    assert client.post(f"/api/generations/{generation_id}/cancel").status_code == 200  # idempotent
    assert client.get(f"/api/download/{generation_id}").status_code == 409
    done = client.post(f"/api/generate/{audio_id}", json={"duration": 5}).json()["generation_id"]
    assert poll_status(client, done)[-1]["status"] == "completed"
    assert client.post(f"/api/generations/{done}/cancel").status_code == 409


def test_bad_query_parameters_are_422(client: httpx.Client) -> None:
    cases = [
        ("/api/audio", {"limit": 0}),
        ("/api/audio", {"offset": -1}),
        ("/api/generations", {"status": "sleeping"}),
        ("/api/search", {"q": "piano", "k": 0}),
    ]
    for path, params in cases:
        assert client.get(path, params=params).status_code == 422, (path, params)


_song_ids: dict[str, str] = {}


def _uploaded(client: httpx.Client, song: Path) -> str:
    """One upload shared by the parameter tests (it is only read)."""
    if "id" not in _song_ids or client.get(f"/api/audio/{_song_ids['id']}").status_code != 200:
        _song_ids["id"] = upload(client, song).json()["audio_id"]
    return _song_ids["id"]


def test_a_mode_the_model_cannot_serve_is_refused_up_front(client: httpx.Client, song: Path) -> None:
    audio_id = _uploaded(client, song)
    before = client.get("/api/generations", params={"audio_id": audio_id}).json()
    refused = client.post(f"/api/generate/{audio_id}", json={"duration": 5, "mode": "melody"})
    assert refused.status_code == 422
    assert "MusicGen-Melody" in refused.json()["detail"]
    assert client.get("/api/generations", params={"audio_id": audio_id}).json() == before  # no job row made
