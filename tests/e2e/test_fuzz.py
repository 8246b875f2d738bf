"""schemathesis over the server's own OpenAPI schema, with keys required: no 5xx on any route.

Two runs: one with the ids schemathesis makes up (every route's 404 and validation paths), one with the ids
of a real upload and a finished generation (the routes' core logic: embedding, generation, download).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import upload
from tests.e2e.server import Server, poll_status, server_env, wait_for_embedding
from tests.e2e.test_keys import motif_cli

MAX_EXAMPLES = 30  # per operation and phase: enough to find a 500 from a bad input, small enough for CI

pytestmark = pytest.mark.slow


def _schemathesis(server: Server, secret: str, workdir: Path, config: Path | None = None, *extra: str) -> str:
    top = ["--config-file", str(config)] if config else []
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", *top, "run", f"{server.url}/openapi.json", "--checks",
         "not_a_server_error", "--header", f"Authorization: Bearer {secret}", "--max-examples", str(MAX_EXAMPLES),
         "--phases", "examples,coverage,fuzzing", "--workers", "1", "--seed", "1", "--no-color",
         "--request-timeout", "60", "--generation-database", "none", "--exclude-path", "/api/health", *extra],
        capture_output=True, text=True, timeout=900, cwd=workdir,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:] + "\n--- server log ---\n" + server.log(6000)
    assert " passed" in output and "failed" not in output.split("Test cases:")[-1], output[-3000:]
    return output


def test_schemathesis_finds_no_server_error_on_any_route(model_cache: Path, tmp_path: Path, song: Path) -> None:
    # Quotas stay on but wide: a fuzzer's 429 is fine, an unbounded queue of 120 s generations is not.
    env = server_env(tmp_path / "data", model_cache, REQUIRE_API_KEY="true", QUOTA_REQUESTS_PER_MINUTE="0",
                     QUOTA_ACTIVE_GENERATIONS="2", EMBEDDING_WAIT_SECONDS="1", MAX_FILE_SIZE="2000000")  # fmt: skip
    secret = motif_cli(env, tmp_path, "keys", "create", "fuzzer").stdout.strip().splitlines()[-1]
    server = Server(tmp_path, env).start()
    try:
        _schemathesis(server, secret, tmp_path)
        with httpx.Client(base_url=server.url, headers={"X-API-Key": secret}, timeout=30) as client:
            audio_id = upload(client, song).json()["audio_id"]
            assert wait_for_embedding(client, audio_id).status_code == 200
            generation_id = client.post(f"/api/generate/{audio_id}", json={"duration": 5}).json()["generation_id"]
            assert poll_status(client, generation_id)[-1]["status"] == "completed"
        config = tmp_path / "schemathesis.toml"
        config.write_text(f'[parameters]\n"path.audio_id" = "{audio_id}"\n"path.generation_id" = "{generation_id}"\n')
        output = _schemathesis(server, secret, tmp_path, config, "--exclude-method", "DELETE")
        assert "repeatedly returned 404" not in output, output[-3000:]
    finally:
        server.close()
    assert secret not in server.log_path.read_text(errors="replace")
