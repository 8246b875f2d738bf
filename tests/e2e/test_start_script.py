"""`bash start.sh`, the README's first command: serves on HOST/PORT from the environment, stops cleanly."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.e2e.server import Server, server_env

ROOT = Path(__file__).resolve().parents[2]


def test_start_sh_serves_the_api_and_stops_cleanly(model_cache: Path, tmp_path: Path) -> None:
    env = server_env(tmp_path / "data", model_cache, HOST="127.0.0.1")
    server = Server(tmp_path, env, cmd=["bash", str(ROOT / "start.sh")])
    server.env["PORT"] = str(server.port)
    try:
        server.start()
        assert server.client.get("/docs").status_code == 200
        assert server.client.get("/api/health").json()["status"] == "ok"
        server.kill(signal.SIGTERM)
        assert server.proc is not None and server.proc.returncode in (0, -signal.SIGTERM), server.log()
        assert "Application shutdown complete" in server.log()
    finally:
        server.close()
