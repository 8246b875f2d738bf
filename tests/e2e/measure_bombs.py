"""Measure what the worst uploads cost a real server: `python -m tests.e2e.measure_bombs [--quick] [--out DIR]`.

Starts `motif serve` on loopback with the default limits (tiny models), uploads each bomb, and prints
per upload: the answer, seconds to the answer, seconds until its embedding is done (or failed), and the
server's peak resident memory above what it held before the upload. One JSON line per bomb.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.e2e.bombs import current_rss, peak_rss, reset_peak_rss, write_bomb
from tests.e2e.server import Server, server_env
from tests.synth import music_like, write_format

MB = 1e6
# (name, format, sample rate, channels, seconds): the two files, then the worst WAVs under 100 MiB.
BOMBS = [
    ("flac-655350Hz-1ch-299s", "flac", 655_350, 1, 299.0),
    ("flac-655350Hz-8ch-299s", "flac", 655_350, 8, 299.0),
    ("wav8-655350Hz-1ch-150s", "wav8", 655_350, 1, 150.0),
    ("flac-192000Hz-8ch-299s", "flac", 192_000, 8, 299.0),
    ("wav-192000Hz-8ch-34s", "wav", 192_000, 8, 34.0),
    # The worst that the default limits accept: 115 M decoded values each.
    ("flac-192000Hz-2ch-299s", "flac", 192_000, 2, 299.0),
    ("flac-48000Hz-8ch-299s", "flac", 48_000, 8, 299.0),
    ("wav8-192000Hz-2ch-270s", "wav8", 192_000, 2, 270.0),
]


def measure(server: Server, path: Path, timeout: float = 900.0) -> dict[str, object]:
    """Upload `path` and wait for its embedding; the peak memory is the server's over the whole of it."""
    assert server.proc is not None
    pid = server.proc.pid
    reset_peak_rss(pid)
    before = current_rss(pid)
    start = time.monotonic()
    with open(path, "rb") as file:
        answer = server.client.post("/api/upload", files={"file": (path.name, file)}, timeout=timeout)
    answered = time.monotonic() - start
    embedded = None
    if answer.status_code == 201:
        audio_id = answer.json()["audio_id"]
        deadline = time.monotonic() + timeout
        while server.client.get(f"/api/embedding/{audio_id}", timeout=timeout).status_code == 202:
            if time.monotonic() > deadline:
                break
        embedded = time.monotonic() - start
    return {"file": path.name, "bytes": path.stat().st_size, "status": answer.status_code,
            "detail": answer.json().get("detail") if answer.status_code != 201 else None,
            "answer_s": round(answered, 2), "embedded_s": None if embedded is None else round(embedded, 2),
            "peak_extra_mb": round((peak_rss(pid) - before) / MB, 1), "rss_before_mb": round(before / MB, 1),
            "peak_mb": round(peak_rss(pid) / MB, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="where the bombs are written (default: a temp dir)")
    parser.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "motif-bomb-models")
    parser.add_argument("--only", nargs="*", default=None, help="names of the bombs to send")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="motif-bombs-"))
    out.mkdir(parents=True, exist_ok=True)
    server = Server(out, server_env(out / "data", args.models, EMBEDDING_WAIT_SECONDS="5")).start()
    try:
        warm = write_format(out / "warm.wav", music_like(5.0, 44_100), 44_100, "wav16")
        print(json.dumps({"warm-up": measure(server, warm)}), flush=True)
        for name, fmt, rate, channels, seconds in BOMBS:
            if args.only and name not in args.only:
                continue
            path = out / f"{name}.{'flac' if fmt == 'flac' else 'wav'}"
            if not path.exists():
                write_bomb(path, fmt, rate, channels, seconds)
            print(json.dumps({name: measure(server, path)}), flush=True)
    except httpx.HTTPError as error:
        print(f"server failed: {error!r}\n{server.log()}", file=sys.stderr)
        raise
    finally:
        server.close()


if __name__ == "__main__":
    main()
