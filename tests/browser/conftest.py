"""A real Motif server (tiny models) and Debian's Chromium driven by Playwright, kept off the network.

The browser must start: when it cannot, the tests fail with the reason (scripts/test.sh installs it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import Server, server_env
from tests.synth import music_like, write_format

CHROMIUM = os.environ.get("MOTIF_TEST_CHROMIUM", "/usr/bin/chromium")
# Headless and offline: every host but loopback resolves to nothing, and Chromium's own services are off.
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI and containers run as root
    "--autoplay-policy=no-user-gesture-required",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--no-first-run",
    "--metrics-recording-only",
]


@pytest.fixture(scope="package")
def server(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("browser-server")
    env = server_env(workdir / "data", model_cache, MAX_BATCH_SIZE="4", EMBEDDING_WAIT_SECONDS="20")
    running = Server(workdir, env).start()
    yield running
    running.close()


@pytest.fixture(scope="package")
def keyed_server(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server that requires API keys, and the secret of one key (made with `motif keys create`)."""
    workdir = tmp_path_factory.mktemp("browser-keyed")
    env = server_env(workdir / "data", model_cache, REQUIRE_API_KEY="true", HOST="127.0.0.1")
    created = subprocess.run([sys.executable, "-m", "motif.cli", "keys", "create", "page"], env=env, cwd=workdir,
                             capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    running = Server(workdir, env).start()
    yield running, created.stdout.strip().splitlines()[-1]
    running.close()


@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        except Error as error:
            pytest.fail(f"Chromium did not start ({CHROMIUM}); `apt-get install -y chromium` (scripts/test.sh "
                        f"does): {error}", pytrace=False)  # fmt: skip
        yield launched
        launched.close()


@pytest.fixture(scope="package")
def song_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 s of synthesized music as WAV: what a person would drop on the page."""
    return write_format(tmp_path_factory.mktemp("page-audio") / "little-band.wav", music_like(8.0, 32_000, seed=4),
                        32_000, "wav16")  # fmt: skip
