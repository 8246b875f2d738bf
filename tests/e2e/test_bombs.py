"""Upload bombs through a real server at the default limits: each costs bounded memory, accepted or refused.

A benchmark-style check: it measures the server process's peak resident memory (VmHWM, reset before each
upload) while the upload is decoded, analysed and embedded, and asserts the bound the issue sets. The
timeouts are generous ceilings for a loaded machine, not speed goals.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.bombs import current_rss, peak_rss, reset_peak_rss, write_bomb
from tests.e2e.conftest import upload
from tests.e2e.server import Server, server_env, wait_for_embedding
from tests.synth import music_like, write_format

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for the peak RSS")

MB = 1_000_000
EXTRA_MEMORY_BOUND = 300 * MB  # the goal: per upload, at the default limits
ANSWER_TIMEOUT = 60.0  # seconds: a ceiling for a loaded 2-core box, not a speed goal


@pytest.fixture(scope="module")
def bomb_server(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Default limits (MAX_FILE_SIZE, MAX_DURATION, MAX_SAMPLE_RATE, ...); warmed up by one normal upload."""
    workdir = tmp_path_factory.mktemp("bomb-server")
    running = Server(workdir, server_env(workdir / "data", model_cache, EMBEDDING_WAIT_SECONDS="20")).start()
    song = write_format(workdir / "warm.wav", music_like(5.0, 44_100), 44_100, "wav16")
    answer = upload(running.client, song)
    assert answer.status_code == 201, answer.text
    assert wait_for_embedding(running.client, answer.json()["audio_id"]).status_code == 200
    yield running
    running.close()


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bombs")


def send(server: Server, path: Path) -> tuple[httpx.Response, int]:
    """Upload `path` and wait for its embedding; returns the answer and the server's peak extra memory (bytes)."""
    assert server.proc is not None
    pid = server.proc.pid
    reset_peak_rss(pid)
    before = current_rss(pid)
    with httpx.Client(base_url=server.url, timeout=ANSWER_TIMEOUT) as client:
        answer = upload(client, path)
        if answer.status_code == 201:
            embedding = wait_for_embedding(client, answer.json()["audio_id"], timeout=ANSWER_TIMEOUT)
            assert embedding.status_code == 200, embedding.text
    return answer, peak_rss(pid) - before


@pytest.mark.parametrize(
    ("fmt", "rate", "channels", "seconds", "reason"),
    [
        ("flac", 655_350, 1, 299.0, "655350 Hz"),  # the file: 743 kB, 196 M samples
        ("flac", 655_350, 8, 30.0, "655350 Hz"),
        ("wav8", 655_350, 1, 10.0, "655350 Hz"),
        ("wav", 48_000, 64, 2.0, "64 channels"),
    ],
)  # fmt: skip
def test_a_rate_or_channel_count_over_the_limit_is_refused_before_decoding(
    bomb_server: Server, bombs: Path, fmt: str, rate: int, channels: int, seconds: float, reason: str
) -> None:
    path = write_bomb(bombs / f"{fmt}-{rate}-{channels}.bin", fmt, rate, channels, seconds)

    answer, extra = send(bomb_server, path)

    assert answer.status_code == 422, answer.text
    assert reason in answer.json()["detail"] and "limit" in answer.json()["detail"]
    assert extra < 50 * MB, f"{extra / MB:.0f} MB to refuse a header"


def test_too_many_decoded_samples_are_refused_while_decoding_with_bounded_memory(
    bomb_server: Server, bombs: Path
) -> None:
    # 192 kHz x 8 channels x 299 s = 459 M values: every limit but MAX_SAMPLES (120 M) lets it through.
    path = write_bomb(bombs / "flac-192k-8ch.flac", "flac", 192_000, 8, 299.0)

    answer, extra = send(bomb_server, path)

    assert answer.status_code == 413, answer.text
    assert "MAX_SAMPLES" in answer.json()["detail"]
    assert extra < EXTRA_MEMORY_BOUND, f"{extra / MB:.0f} MB"


@pytest.mark.parametrize(
    ("fmt", "rate", "channels", "seconds"),
    [
        ("flac", 192_000, 2, 299.0),  # 115 M values, 240 kB: the most a FLAC may decode to
        ("flac", 48_000, 8, 299.0),  # 7.1 surround, 5 minutes
        ("wav8", 192_000, 2, 270.0),  # 104 MB: the largest WAV under MAX_FILE_SIZE at the highest rate
    ],
)  # fmt: skip
def test_the_worst_accepted_uploads_cost_bounded_memory(
    bomb_server: Server, bombs: Path, fmt: str, rate: int, channels: int, seconds: float
) -> None:
    path = write_bomb(bombs / f"ok-{fmt}-{rate}-{channels}.bin", fmt, rate, channels, seconds)

    answer, extra = send(bomb_server, path)

    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["sample_rate"], body["channels"]) == (rate, channels)
    assert body["duration"] == pytest.approx(seconds, abs=0.05)
    assert extra < EXTRA_MEMORY_BOUND, f"{extra / MB:.0f} MB"


def test_a_burst_of_uploads_waits_for_decoding_instead_of_multiplying_memory(
    bomb_server: Server, bombs: Path
) -> None:
    path = write_bomb(bombs / "burst.flac", "flac", 192_000, 2, 120.0)
    assert bomb_server.proc is not None
    pid = bomb_server.proc.pid
    reset_peak_rss(pid)
    before = current_rss(pid)

    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=bomb_server.url, timeout=4 * ANSWER_TIMEOUT) as client:
            return upload(client, path)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(4)))

    assert [a.status_code for a in answers] == [201] * 4  # under MAX_CONCURRENT_UPLOADS (8): they wait their turn
    for answer in answers:
        embedding = wait_for_embedding(bomb_server.client, answer.json()["audio_id"], timeout=4 * ANSWER_TIMEOUT)
        assert embedding.status_code == 200, embedding.text
    # MAX_CONCURRENT_DECODES (2) uploads and one embedding are decoded at a time, not four.
    extra = peak_rss(pid) - before
    assert extra < 2 * EXTRA_MEMORY_BOUND, f"{extra / MB:.0f} MB for four at once"
