"""API keys over real HTTP: 401s, the cross-tenant 404 matrix built from the app's own routes, quotas with
Retry-After, health for anonymous callers, keys that work across processes, and no secret in any log line."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from motif.config import Settings
from motif.service.api.app import create_app
from tests.e2e.conftest import upload
from tests.e2e.server import Server, poll_status, server_env, wait_for_embedding

# Routes that create rather than read what already exists: they take no id of another tenant's.
CREATING = {("POST", "/api/upload")}
QUERY_VALUES = {"q": "calm piano"}


@dataclass
class Keyed:
    server: Server
    secrets: dict[str, str]  # key name -> secret

    def client(self, name: str | None, header: str = "bearer") -> httpx.Client:
        headers = {}
        if name is not None:
            secret = self.secrets[name]
            headers = {"Authorization": f"Bearer {secret}"} if header == "bearer" else {"X-API-Key": secret}
        return httpx.Client(base_url=self.server.url, headers=headers, timeout=30.0)


def motif_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "motif.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=True)  # fmt: skip


@pytest.fixture(scope="module")
def keyed(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    workdir = tmp_path_factory.mktemp("keyed")
    env = server_env(workdir / "data", model_cache, REQUIRE_API_KEY="true", EMBEDDING_WAIT_SECONDS="20")
    key_options = {"alice": [], "bob": [], "root": ["--admin"], "slow": ["--rate-per-minute", "3"],
                   "busy": ["--max-active", "1"], "thrifty": ["--daily-seconds", "10"],
                   "tiny-disk": ["--stored-bytes", "1000"], "gone": []}  # fmt: skip
    secrets = {}
    for name, options in key_options.items():
        created = motif_cli(env, workdir, "keys", "create", name, *options)
        secrets[name] = created.stdout.strip().splitlines()[-1]
    server = Server(workdir, env).start()
    yield Keyed(server, secrets)
    server.close()


def test_keys_create_prints_the_secret_alone_on_the_last_line_and_list_never_shows_it(keyed: Keyed) -> None:
    secret = keyed.secrets["alice"]
    assert re.fullmatch(r"motif_[A-Za-z0-9_-]{43}", secret)
    listed = motif_cli(keyed.server.env, keyed.server.workdir, "keys", "list").stdout
    assert "alice" in listed and "root" in listed and not any(s in listed for s in keyed.secrets.values())


def test_missing_unknown_and_revoked_keys_get_401_with_a_challenge(keyed: Keyed) -> None:
    with keyed.client(None) as anonymous:
        for method, path in (("GET", "/api/audio"), ("GET", "/api/status/x"), ("POST", "/api/upload")):
            response = anonymous.request(method, path)
            assert response.status_code == 401, (method, path)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "API key is required" in response.json()["detail"]
        wrong = anonymous.get("/api/audio", headers={"X-API-Key": "motif_" + "A" * 43})
        assert wrong.status_code == 401 and "unknown or revoked" in wrong.json()["detail"]
    with keyed.client("gone") as gone:
        assert gone.get("/api/audio").status_code == 200
        motif_cli(keyed.server.env, keyed.server.workdir, "keys", "revoke", "gone")  # another process
        assert gone.get("/api/audio").status_code == 401
    with keyed.client("alice", header="x-api-key") as alice:
        assert alice.get("/api/audio").status_code == 200


def test_the_openapi_schema_declares_both_schemes_for_swagger(keyed: Keyed) -> None:
    schema = keyed.server.client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer KEY`"}
    assert schemes["apiKey"]["in"] == "header" and schemes["apiKey"]["name"] == "X-API-Key"
    assert {"bearer": []} in schema["paths"]["/api/upload"]["post"]["security"]
    assert keyed.server.client.get("/docs").status_code == 200


def test_health_tells_anonymous_callers_only_ready_or_not(keyed: Keyed) -> None:
    with keyed.client(None) as anonymous, keyed.client("alice") as alice, keyed.client("root") as root:
        for client in (anonymous, alice):
            body = client.get("/api/health").json()
            assert set(body) == {"status", "ready"} and body["ready"] is True
        full = root.get("/api/health").json()
        assert {"models", "queue", "workers", "version"} <= set(full)


def _api_operations() -> list[tuple[str, str, list[str], list[str]]]:
    """(method, path, path parameters, query parameters) of every /api route but health, from the app itself."""
    settings = Settings(_env_file=None, require_api_key=True)  # type: ignore[call-arg]
    schema = create_app(settings).openapi()  # not started: only its routes are read
    operations = []
    for path, methods in schema["paths"].items():
        if not path.startswith("/api/") or path == "/api/health":
            continue
        for method, operation in methods.items():
            params = operation.get("parameters", [])
            operations.append((method.upper(), path, [p["name"] for p in params if p["in"] == "path"],
                               [p["name"] for p in params if p["in"] == "query"]))  # fmt: skip
    return operations


def test_another_tenants_ids_answer_404_on_every_route_and_lists_never_show_them(keyed: Keyed, song: Path) -> None:
    """Enumerates the app's routes: a route added later without tenant scoping fails here."""
    with keyed.client("alice") as alice, keyed.client("bob") as bob, keyed.client("root") as root:
        audio_id = upload(alice, song).json()["audio_id"]
        assert wait_for_embedding(alice, audio_id).status_code == 200
        generation_id = alice.post(f"/api/generate/{audio_id}", json={"duration": 5, "seed": 1}).json()["generation_id"]
        assert poll_status(alice, generation_id)[-1]["status"] == "completed"
        bob_audio = upload(bob, song).json()["audio_id"]  # bob has data of his own to search around
        assert wait_for_embedding(bob, bob_audio).status_code == 200
        ids = {"audio_id": audio_id, "generation_id": generation_id}
        checked = []
        for method, template, params, query_names in _api_operations():
            if (method, template) in CREATING:
                continue
            unknown = [p for p in params if p not in ids]
            assert not unknown, f"{method} {template}: add its path parameters {unknown} to this matrix"
            query = {name: QUERY_VALUES.get(name, ids.get(name)) for name in query_names
                     if name in QUERY_VALUES or name in ids}  # fmt: skip
            body = {"duration": 5} if method == "POST" else None
            response = bob.request(method, template.format(**ids), params=query, json=body)
            if params:
                assert response.status_code == 404, (method, template, response.status_code, response.text)
            else:
                assert response.status_code < 500, (method, template, response.text)
                assert audio_id not in response.text and generation_id not in response.text, (method, template)
            checked.append((method, template))
        assert len(checked) >= 11  # the seed's routes and the library, search and cancel routes at least
        # nothing bob did touched alice's data; the admin key sees it all
        assert alice.get(f"/api/audio/{audio_id}").status_code == 200
        assert alice.get(f"/api/status/{generation_id}").json()["status"] == "completed"
        assert alice.get(f"/api/download/{generation_id}").status_code == 200
        assert root.get(f"/api/audio/{audio_id}").status_code == 200
        assert root.get(f"/api/status/{generation_id}").status_code == 200
        listed = {item["audio_id"] for item in root.get("/api/audio").json()["items"]}
        assert {audio_id, bob_audio} <= listed


def test_request_rate_over_quota_gets_429_with_retry_after(keyed: Keyed) -> None:
    with keyed.client("slow") as slow:
        codes = [slow.get("/api/audio").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        refused = slow.get("/api/audio")
        assert refused.status_code == 429 and 0 < int(refused.headers["retry-after"]) <= 60
        assert "requests per minute" in refused.json()["detail"]


def test_generation_quotas_answer_429_with_retry_after(keyed: Keyed, song: Path) -> None:
    with keyed.client("busy") as busy, keyed.client("thrifty") as thrifty:
        busy_audio = upload(busy, song).json()["audio_id"]
        first = busy.post(f"/api/generate/{busy_audio}", json={"duration": 60})
        assert first.status_code == 202
        second = busy.post(f"/api/generate/{busy_audio}", json={"duration": 5})
        assert second.status_code == 429 and int(second.headers["retry-after"]) > 0
        busy.post(f"/api/generations/{first.json()['generation_id']}/cancel")

        thrifty_audio = upload(thrifty, song).json()["audio_id"]
        kept = thrifty.post(f"/api/generate/{thrifty_audio}", json={"duration": 5})
        assert kept.status_code == 202
        over = thrifty.post(f"/api/generate/{thrifty_audio}", json={"duration": 6})
        assert over.status_code == 429 and "last 24 h" in over.json()["detail"]
        assert int(over.headers["retry-after"]) > 3600
        thrifty.post(f"/api/generations/{kept.json()['generation_id']}/cancel")


def test_an_upload_over_the_storage_quota_gets_413_and_leaves_nothing(keyed: Keyed, song: Path) -> None:
    with keyed.client("tiny-disk") as small:
        refused = upload(small, song)
        assert refused.status_code == 413 and "quota" in refused.json()["detail"]
        assert small.get("/api/audio").json()["total"] == 0
    uploads = keyed.server.workdir / "data" / "uploads"
    assert not [p for p in uploads.iterdir() if p.name.startswith(".tmp-")]


def test_no_secret_ever_reaches_the_server_log(keyed: Keyed) -> None:
    with keyed.client("alice") as alice:
        alice.get("/api/audio", params={"api_key": keyed.secrets["alice"]})
    log = keyed.server.log_path.read_text(errors="replace")
    assert "GET /api/audio" in log or "/api/audio" in log  # the requests above were logged
    for name, secret in keyed.secrets.items():
        assert secret not in log, name


def test_metrics_need_an_admin_key(keyed: Keyed) -> None:
    with keyed.client(None) as anonymous, keyed.client("alice") as alice, keyed.client("root") as root:
        refused = anonymous.get("/metrics")
        assert refused.status_code == 401 and "WWW-Authenticate" in refused.headers
        assert alice.get("/metrics").status_code == 403
        allowed = root.get("/metrics")
    assert allowed.status_code == 200 and "motif_http_requests_total" in allowed.text
