"""Observability and safe internals through a real server: JSON logs with request ids, no secret in any
log line, error ids instead of exception text, /metrics, private files, and a planted kernel refused."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from motif.engine import kernels
from motif.engine.kernel_cache import build_digest
from tests.e2e.conftest import upload
from tests.e2e.server import Server, poll_status, server_env, wait_for_embedding
from tests.service.conftest import wait_until

KEY = "motif_" + "k3Y-_" * 8 + "Q9z"  # shaped like a Motif API key (43 url-safe characters after motif_)
SECRETS = {
    "bearer": "motif_" + "B" * 40 + "e4r",
    "x-api-key": "motif_" + "X" * 40 + "k3y",
    "query": "motif_" + "Q" * 40 + "qs1",
    "body": "motif_" + "D" * 40 + "bd1",
    "path": "motif_" + "P" * 40 + "pth",
    "plain-header": "not-shaped-like-a-key-but-secret-0042",
    "basic": "dXNlcjpub3QtYS1yZWFsLXBhc3N3b3Jk",
}
GENERATION = {"duration": 5, "seed": 3}
KERNEL_PLANT = b"\x7fELF not really a library: loading it would fail"


def _kernel_can_build() -> bool:
    return kernels.cpu_has_vnni() and (shutil.which("gcc") or shutil.which("cc")) is not None


def _plant_kernel(xdg: Path) -> Path:
    """A world-writable file named exactly as a cached build of kernels.c with its own content hash."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    assert compiler is not None
    headers = {kernels._COMMON_HEADER.name: kernels._COMMON_HEADER.read_text()}
    digest = build_digest(kernels._SOURCE_FILE.read_text(), compiler, kernels._FLAGS, headers)
    directory = xdg / "motif" / "kernels"
    directory.mkdir(parents=True)
    planted = directory / f"kernels-{digest}-{hashlib.sha256(KERNEL_PLANT).hexdigest()}.so"
    planted.write_bytes(KERNEL_PLANT)
    os.chmod(planted, 0o666)
    return planted


@pytest.fixture(scope="module")
def observed(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path | None]]:
    """A server logging JSON, with its own XDG cache holding a planted kernel (where the kernel can build)."""
    workdir = tmp_path_factory.mktemp("observed")
    planted = _plant_kernel(workdir / "xdg") if _kernel_can_build() else None
    env = server_env(workdir / "data", model_cache, LOG_FORMAT="json", XDG_CACHE_HOME=str(workdir / "xdg"),
                     EMBEDDING_WAIT_SECONDS="20")  # fmt: skip
    server = Server(workdir, env).start()
    yield server, planted
    server.close()


@pytest.fixture(scope="module")
def json_server(observed: tuple[Server, Path | None]) -> Server:
    return observed[0]


def _log_lines(server: Server) -> list[dict[str, Any]]:
    """Every line of the server's log, each of which must be one JSON object."""
    lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON log line: {line!r}")
        assert isinstance(parsed[-1], dict), line
    return parsed


def _request_line(server: Server, request_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        found = [r for r in _log_lines(server) if r.get("request_id") == request_id and "route" in r]
        return found[-1] if found else None

    return wait_until(find, timeout=10.0, what=f"the log line of request {request_id}")


@pytest.fixture(scope="module")
def finished(json_server: Server, song: Path) -> dict[str, Any]:
    """An upload, its embedding and one completed generation on the JSON server."""
    client = json_server.client
    audio = upload(client, song).json()
    assert wait_for_embedding(client, audio["audio_id"]).status_code == 200
    created = client.post(f"/api/generate/{audio['audio_id']}", json=GENERATION)
    assert created.status_code == 202, created.text
    final = poll_status(client, created.json()["generation_id"])[-1]
    assert final["status"] == "completed", final
    return {"audio_id": audio["audio_id"], "generation_id": final["generation_id"]}


def test_every_line_is_json_and_requests_carry_their_id(json_server: Server, finished: dict[str, Any]) -> None:
    client = json_server.client
    response = client.get(f"/api/status/{finished['generation_id']}", headers={"X-Request-ID": "trace-42.a"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "trace-42.a"
    line = _request_line(json_server, "trace-42.a")
    assert line["route"] == "/api/status/{generation_id}" and line["status"] == 200 and line["method"] == "GET"
    assert line["job_id"] == finished["generation_id"] and line["duration_ms"] >= 0 and line["level"] == "INFO"

    created = client.post(f"/api/generate/{finished['audio_id']}", json=GENERATION, headers={"X-Request-ID": "gen-1"})
    line = _request_line(json_server, "gen-1")  # a new job's id is in the line of the request that made it
    assert line["job_id"] == created.json()["generation_id"] and line["audio_id"] == finished["audio_id"]
    assert line["route"] == "/api/generate/{audio_id}" and line["status"] == 202
    poll_status(client, created.json()["generation_id"])

    generated = client.get("/api/audio").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    replaced = client.get("/api/audio", headers={"X-Request-ID": "no spaces or {braces}"}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", replaced)
    assert _request_line(json_server, generated)["route"] == "/api/audio"

    lines = _log_lines(json_server)  # uvicorn's own lines too
    assert any(r.get("logger", "").startswith("uvicorn") for r in lines)
    assert all(set(r) >= {"time", "level", "logger", "message"} for r in lines)
    assert not [r for r in lines if r.get("logger") == "uvicorn.access"]  # replaced by the request lines


def test_no_secret_reaches_any_log_line(json_server: Server, finished: dict[str, Any]) -> None:
    client = json_server.client
    headers = {"Authorization": f"Bearer {SECRETS['bearer']}", "X-API-Key": SECRETS["x-api-key"],
               "X-Custom-Token": SECRETS["plain-header"]}  # fmt: skip
    basic = {**headers, "Authorization": f"Basic {SECRETS['basic']}"}
    requests: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
        ("GET", f"/api/audio?api_key={SECRETS['query']}&token={SECRETS['query']}", {}, headers),
        ("POST", f"/api/generate/{finished['audio_id']}", {**GENERATION, "prompt": SECRETS["body"]}, headers),
        ("POST", f"/api/generate/{finished['audio_id']}", {"duration": 1, "api_key": SECRETS["body"]}, headers),
        ("GET", f"/api/audio/{SECRETS['path']}", {}, headers),
        ("GET", f"/nowhere/{SECRETS['path']}?key={SECRETS['query']}", {}, headers),
        ("GET", "/api/health", {}, basic),
    ]
    ids = []
    for i, (method, url, body, sent) in enumerate(requests):
        request_id = f"secret-test-{i}"
        response = client.request(method, url, json=body or None, headers={**sent, "X-Request-ID": request_id})
        assert response.status_code < 500, response.text
        ids.append(request_id)
    statuses = [_request_line(json_server, request_id)["status"] for request_id in ids]  # every request was logged
    assert statuses[3] == 404 and statuses[4] == 404 and statuses[2] == 422
    text = json_server.log_path.read_text()
    leaked = [name for name, secret in SECRETS.items() if secret in text]
    assert not leaked, f"secrets in the server log: {leaked}"
    assert "motif_[REDACTED]" in text  # the upload id in the path was a key: logged, redacted


def test_an_internal_error_answers_an_error_id_found_in_the_log(json_server: Server, finished: dict[str, Any]) -> None:
    """A corrupt row makes GET /api/status fail inside SQLAlchemy: the answer says only "internal error"."""
    client = json_server.client
    created = client.post(f"/api/generate/{finished['audio_id']}", json=GENERATION)
    generation_id = created.json()["generation_id"]
    poll_status(client, generation_id)
    with sqlite3.connect(json_server.workdir / "data" / "motif.db") as db:
        db.execute("UPDATE job SET params = 'not json at all' WHERE id = ?", (generation_id,))
    response = client.get(f"/api/status/{generation_id}", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500 and response.headers["x-request-id"] == "boom-1"
    body = response.json()
    assert set(body) == {"detail", "error_id"} and body["detail"] == "internal error"
    assert re.fullmatch(r"[0-9a-f]{16}", body["error_id"])
    details = [r for r in _log_lines(json_server) if r.get("error_id") == body["error_id"] and "exc_info" in r]
    assert len(details) == 1 and "JSONDecodeError" in details[0]["exc_info"]
    assert details[0]["request_id"] == "boom-1" and body["error_id"] in details[0]["message"]
    assert _request_line(json_server, "boom-1")["status"] == 500


def test_a_job_failing_inside_says_only_its_error_id(json_server: Server, song: Path) -> None:
    """The upload's processed audio is damaged on disk: the generation fails with an id, not a traceback."""
    client = json_server.client
    audio_id = upload(client, song).json()["audio_id"]
    processed = json_server.workdir / "data" / "processed"
    (stored,) = [p for p in processed.iterdir() if p.name.startswith(audio_id)]
    stored.write_bytes(b"this is not a numpy file")
    created = client.post(f"/api/generate/{audio_id}", json=GENERATION)
    final = poll_status(client, created.json()["generation_id"])[-1]
    assert final["status"] == "failed"
    match = re.fullmatch(r"internal error \(error id ([0-9a-f]{16})\)", final["error"])
    assert match, final["error"]
    details = [r for r in _log_lines(json_server) if r.get("error_id") == match.group(1)]
    assert len(details) == 1 and "exc_info" in details[0]
    assert details[0]["job_id"] == final["generation_id"] and details[0]["audio_id"] == audio_id


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, []) if all(found.get(k) == want for k, want in labels.items()))


def test_metrics(json_server: Server, finished: dict[str, Any]) -> None:
    client = json_server.client
    client.get(f"/api/status/{finished['generation_id']}")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert finished["generation_id"] not in response.text  # routes are templates, never raw paths
    samples = _samples(response.text)
    assert _value(samples, "motif_http_requests_total", method="GET", route="/api/status/{generation_id}",
                  status="200") >= 1  # fmt: skip
    assert _value(samples, "motif_http_request_duration_seconds_count", route="/api/status/{generation_id}") >= 1
    assert _value(samples, "motif_upload_bytes_count", status="201") >= 1
    assert _value(samples, "motif_upload_bytes_sum", status="201") > 10_000
    assert _value(samples, "motif_jobs_total", kind="generation", status="completed") >= 1
    assert _value(samples, "motif_jobs_total", kind="embedding", status="completed") >= 1
    assert _value(samples, "motif_jobs_total", kind="generation", status="failed") >= 1  # the damaged upload's
    assert _value(samples, "motif_job_duration_seconds_count", kind="generation", status="completed") >= 1
    assert _value(samples, "motif_generation_realtime_factor_count") >= 1
    assert _value(samples, "motif_generated_audio_seconds_total") >= GENERATION["duration"]
    assert _value(samples, "motif_decode_steps_total") >= 5 * 50  # 50 frames per second of audio
    assert _value(samples, "motif_decode_steps_per_second") > 0
    assert _value(samples, "motif_generation_batch_size_count") == _value(samples, "motif_decode_steps_total")
    for role in ("generation", "embedding"):
        assert _value(samples, "motif_model_state", role=role, state="loaded") == 1
        assert _value(samples, "motif_model_state", role=role, state="missing") == 0
    assert "motif_queue_depth" in samples and _value(samples, "motif_worker_alive", kind="generation") == 1
    assert _value(samples, "motif_http_requests_total", route="<unmatched>") == _value(
        samples, "motif_http_requests_total", route="<unmatched>", status="404")  # fmt: skip


def test_stored_files_are_private(json_server: Server, finished: dict[str, Any]) -> None:
    data = json_server.workdir / "data"
    for area in ("uploads", "processed", "generated"):
        assert stat.S_IMODE((data / area).stat().st_mode) == 0o700, area
        files = list((data / area).iterdir())
        assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), area
    for name in ("motif.db", "motif.db-wal", "motif.db-shm"):
        if (data / name).exists():
            assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name


def test_a_planted_kernel_is_refused_and_rebuilt(
    observed: tuple[Server, Path | None], finished: dict[str, Any]
) -> None:
    server, planted = observed
    if planted is None:
        pytest.skip("the int8 kernel cannot build here (no AVX512-VNNI or no gcc)")
    lines = _log_lines(server)
    refusals = [r for r in lines if "refusing to load the cached kernel" in r["message"]]
    assert len(refusals) == 1 and "group- or world-writable" in refusals[0]["message"], refusals
    assert not [r for r in lines if "int8 kernel unavailable" in r["message"]]  # the rebuilt one loaded
    assert not planted.exists()
    directory = planted.parent
    (built,) = directory.glob("kernels-*.so")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700 and stat.S_IMODE(built.stat().st_mode) & 0o022 == 0
    assert built.name.endswith(hashlib.sha256(built.read_bytes()).hexdigest() + ".so")


def test_text_logs_by_default_with_the_same_fields_and_no_secret(server: Server) -> None:
    """The shared e2e server runs with the default LOG_FORMAT: readable lines, the same fields, no secret."""
    response = server.client.get("/api/audio", params={"limit": 2, "api_key": KEY}, headers={"X-Request-ID": "txt-1"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "txt-1"

    def line() -> str | None:
        found = [x for x in server.log_path.read_text().splitlines() if "request_id=txt-1" in x]
        return found[-1] if found else None

    logged = wait_until(line, timeout=10.0, what="the request's text log line")
    assert " INFO motif.request: GET /api/audio 200 " in logged and "route=/api/audio" in logged
    assert "status=200" in logged and "duration_ms=" in logged
    text = server.log_path.read_text()
    assert KEY not in text and "limit=2" not in text  # no raw query string: uvicorn's access log is off
