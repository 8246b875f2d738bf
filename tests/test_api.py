"""Exercise a running Motif server the way a client would, printing each step (not a pytest module).

    python tests/test_api.py                 # the seed's flow: upload, embedding, generate, poll, download
    python tests/test_api.py --full          # also every other route and the error answers
    python tests/test_api.py --url http://host:8000 --duration 10

Exits 1 if any check fails. Start a server first: `bash start.sh` (offline: GENERATION_MODEL=tiny
EMBEDDING_MODEL=tiny bash start.sh). Nothing here is collected by pytest: no function is named test_*.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import wave
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


class Checks:
    """Prints one line per check and remembers failures."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}{': ' + detail if detail else ''}")
        if not ok:
            self.failed.append(name)
        return ok

    def status(self, name: str, response: httpx.Response, expected: int) -> bool:
        detail = f"HTTP {response.status_code}"
        if response.status_code != expected:
            detail += f" (expected {expected}): {response.text[:300]}"
        return self.check(name, response.status_code == expected, detail)


def make_song(seconds: float) -> bytes:
    """A short synthetic piece as WAV bytes (the tests' music generator when present, else a chord)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    try:
        from tests.synth import music_like

        samples = music_like(seconds, 32_000, seed=1)
    except ImportError:
        t = np.arange(int(seconds * 32_000)) / 32_000
        samples = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(32_000)
        out.writeframes(pcm)
    return buffer.getvalue()


def wait_embedding(client: httpx.Client, audio_id: str, deadline: float) -> httpx.Response:
    while True:
        response = client.get(f"/api/embedding/{audio_id}")
        if response.status_code != 202 or time.monotonic() > deadline:
            return response
        time.sleep(float(response.headers.get("retry-after", "1")))


def poll(client: httpx.Client, generation_id: str, deadline: float, quiet: bool = False) -> dict[str, Any]:
    last = -1.0
    while True:
        status = client.get(f"/api/status/{generation_id}").json()
        if not quiet and status["progress"] != last:
            print(f"    {status['status']:<10} {status['progress']:5.1f}%")
            last = status["progress"]
        if status["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def run_seed_flow(client: httpx.Client, args: argparse.Namespace, checks: Checks) -> dict[str, str]:
    """upload -> embedding -> generate -> poll status -> download a WAV of the requested length."""
    print("health")
    health = client.get("/api/health")
    if checks.status("GET /api/health", health, 200):
        body = health.json()
        models = ", ".join(f"{m['role']}={m['model_id']} ({m['state']})" for m in body["models"])
        checks.check("server ready", body["ready"], f"{body['status']}; {models}")
    print("upload")
    upload = client.post("/api/upload", files={"file": ("test_api.wav", make_song(12.0), "audio/wav")})
    if not checks.status("POST /api/upload", upload, 201):
        return {}
    audio = upload.json()
    analysis = audio["analysis"]
    print(f"    audio_id {audio['audio_id']}: {audio['duration']:.1f} s, tempo {analysis['tempo_bpm']} BPM, "
          f"key {analysis['key']} {analysis['mode']}")  # fmt: skip
    print("embedding")
    embedding = wait_embedding(client, audio["audio_id"], time.monotonic() + args.timeout)
    if checks.status("GET /api/embedding/{audio_id}", embedding, 200):
        vector = embedding.json()["embedding"]
        norm = sum(v * v for v in vector) ** 0.5
        checks.check("512 values of norm 1", len(vector) == 512 and abs(norm - 1) < 1e-3, f"{len(vector)}, {norm:.4f}")
    print("generate")
    params = {"duration": args.duration, "temperature": 1.0, "top_k": 250, "top_p": 0.0, "cfg_coef": 3.0, "seed": 7}
    created = client.post(f"/api/generate/{audio['audio_id']}", json=params)
    if not checks.status("POST /api/generate/{audio_id}", created, 202):
        return {"audio_id": audio["audio_id"]}
    generation_id = created.json()["generation_id"]
    status = poll(client, generation_id, time.monotonic() + args.timeout)
    checks.check("generation completed", status["status"] == "completed", status.get("error") or "")
    print("download")
    download = client.get(f"/api/download/{generation_id}")
    if checks.status("GET /api/download/{generation_id}", download, 200):
        with wave.open(io.BytesIO(download.content)) as result:
            seconds = result.getnframes() / result.getframerate()
            rate = result.getframerate()
        checks.check("WAV at 32 kHz of the requested length", rate == 32_000 and abs(seconds - args.duration) < 0.05,
                     f"{rate} Hz, {seconds:.2f} s, similarity {status['similarity']}")  # fmt: skip
        if args.out:
            Path(args.out).write_bytes(download.content)
            print(f"    saved {args.out}")
    return {"audio_id": audio["audio_id"], "generation_id": generation_id}


def run_full(client: httpx.Client, ids: dict[str, str], args: argparse.Namespace, checks: Checks) -> None:
    """Every other route, and the errors a client can meet."""
    audio_id, generation_id = ids["audio_id"], ids["generation_id"]
    print("library and search")
    checks.status("GET /api/audio", client.get("/api/audio", params={"limit": 5}), 200)
    checks.status("GET /api/audio/{audio_id}", client.get(f"/api/audio/{audio_id}"), 200)
    listed = client.get("/api/generations", params={"audio_id": audio_id})
    checks.status("GET /api/generations?audio_id=", listed, 200)
    checks.status("GET /api/search/similar/{audio_id}", client.get(f"/api/search/similar/{audio_id}"), 200)
    checks.status("GET /api/search?q=", client.get("/api/search", params={"q": "calm piano"}), 200)
    ranged = client.get(f"/api/download/{generation_id}", headers={"Range": "bytes=0-43"})
    checks.status("Range: bytes=0-43", ranged, 206)
    for path in ("/docs", "/redoc", "/openapi.json"):
        checks.status(f"GET {path}", client.get(path), 200)
    print("errors")
    checks.status(
        "not audio -> 415", client.post("/api/upload", files={"file": ("a.txt", b"hello", "text/plain")}), 415
    )
    checks.status("no file field -> 422", client.post("/api/upload", files={"other": ("a", b"x")}), 422)
    checks.status("duration 500 -> 422", client.post(f"/api/generate/{audio_id}", json={"duration": 500}), 422)
    checks.status("unknown upload -> 404", client.post("/api/generate/nope", json={}), 404)
    checks.status("unknown generation -> 404", client.get("/api/status/nope"), 404)
    running = client.post(f"/api/generate/{audio_id}", json={"duration": 30, "seed": 1}).json()["generation_id"]
    checks.status("download while not completed -> 409", client.get(f"/api/download/{running}"), 409)
    cancel = client.post(f"/api/generations/{running}/cancel")
    checks.check("cancel -> 200/202", cancel.status_code in (200, 202), f"HTTP {cancel.status_code}")
    final = poll(client, running, time.monotonic() + args.timeout, quiet=True)
    checks.check("cancelled", final["status"] == "cancelled", final["status"])
    print("delete")
    checks.status("DELETE /api/audio/{audio_id}", client.delete(f"/api/audio/{audio_id}"), 204)
    checks.status("its generation is gone -> 404", client.get(f"/api/status/{generation_id}"), 404)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://localhost:8000", help="the server (default %(default)s)")
    parser.add_argument("--full", action="store_true", help="also every other route and the error answers")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds to generate (5-120)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for a job")
    parser.add_argument("--out", default=None, help="save the generated audio here")
    args = parser.parse_args(argv)
    checks = Checks()
    print(f"Motif API at {args.url}")
    with httpx.Client(base_url=args.url, timeout=120.0) as client:
        try:
            ids = run_seed_flow(client, args, checks)
            if args.full and "generation_id" in ids:
                run_full(client, ids, args, checks)
        except httpx.TransportError as error:
            checks.check("server reachable", False, f"{error!r}: is it running at {args.url}?")
    print(f"{'FAILED: ' + ', '.join(checks.failed) if checks.failed else 'all checks passed'}")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
