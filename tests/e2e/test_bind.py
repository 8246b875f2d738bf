"""Where the server listens: loopback unless keys protect it, and a loud warning for a public address without."""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

from motif.config import Settings
from tests.e2e.server import Server, free_port, server_env


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on `port` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if int(port_hex, 16) == port and state == "0A":  # 0A: LISTEN
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


def test_bind_host_defaults_to_loopback_without_keys_and_to_every_address_with_them() -> None:
    assert Settings(_env_file=None).bind_host == "127.0.0.1"  # type: ignore[call-arg]
    assert Settings(_env_file=None, require_api_key=True).bind_host == "0.0.0.0"  # type: ignore[call-arg]
    assert Settings(_env_file=None, host="10.1.2.3").bind_host == "10.1.2.3"  # type: ignore[call-arg]
    assert Settings(_env_file=None, host="").bind_host == "127.0.0.1"  # type: ignore[call-arg]  # HOST= in .env


def test_a_server_without_host_and_keys_listens_on_loopback_only(model_cache: Path, tmp_path: Path) -> None:
    port = free_port()
    env = server_env(tmp_path / "data", model_cache)
    server = Server(tmp_path, env, cmd=[sys.executable, "-m", "motif.cli", "serve", "--port", str(port)])
    server.url, server.port = f"http://127.0.0.1:{port}", port
    server.client.base_url = server.url  # type: ignore[assignment]
    server.start(ready=False)
    try:
        assert _listening_addresses(port) == {"127.0.0.1"}
    finally:
        server.close()
    assert "WITHOUT API KEYS" not in server.log()


def test_a_public_address_without_keys_is_served_only_with_a_loud_warning(model_cache: Path, tmp_path: Path) -> None:
    env = server_env(tmp_path / "data", model_cache)
    (tmp_path / "data").mkdir()
    cmd = [sys.executable, "-m", "motif.cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())]
    # DATA_DIR is held by "another server" (this test's lock): the server refuses to start right after the
    # warning, so nothing ever listens on a public address here.
    with open(tmp_path / "data" / "motif.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        warned = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        keyed = subprocess.run(cmd, env={**env, "REQUIRE_API_KEY": "true"}, cwd=tmp_path, capture_output=True,
                               text=True, timeout=120)  # fmt: skip
    assert "WITHOUT API KEYS" in warned.stderr and "REQUIRE_API_KEY=true" in warned.stderr
    assert "already using DATA_DIR" in warned.stderr and warned.returncode != 0
    assert "WITHOUT API KEYS" not in keyed.stderr and keyed.returncode != 0
