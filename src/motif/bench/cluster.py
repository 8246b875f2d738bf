"""`python -m motif.bench.cluster`: jobs per second and per-job overhead, embedded vs distributed, 1 vs 2 workers.

Starts `motif serve` (and `motif worker` processes) as subprocesses on loopback, the way a deployment runs
them, with tiny models by default; sends N generations at once; reports throughput and, for one job alone,
its latency (POST to `completed`, seen by polling the list every 0.1 s); the distributed path's overhead per job is
its one-job latency minus the embedded one (the same engine work, plus broker, leases, S3 and PostgreSQL).
The distributed runs need services: BROKER_URL, DATABASE_URL (PostgreSQL) and STORAGE_URL (+ S3_ENDPOINT_URL)
in the environment (README "Scaling out" shows how to start them by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

START_TIMEOUT = 300.0  # seconds for a server or worker to be ready on a loaded box


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


class Deployment:
    """One API process and n workers (n = 0: embedded) over the given environment."""

    def __init__(self, env: dict[str, str], n_workers: int, workdir: Path) -> None:
        self.env, self.n_workers, self.workdir = env, n_workers, workdir
        self.port = _free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60.0)

    def _spawn(self, args: list[str], name: str) -> None:
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.procs.append(subprocess.Popen([sys.executable, "-m", "motif.cli", *args], env=self.env,
                                               cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT))  # fmt: skip

    def __enter__(self) -> Deployment:
        try:
            self._spawn(["serve", "--host", "127.0.0.1", "--port", str(self.port)], "api")
            _wait(lambda: self._health() is not None, START_TIMEOUT, "the API (it migrates the schema first)")
            for i in range(self.n_workers):
                self._spawn(["worker", "--hostname", f"bench{i}@%h"], f"worker{i}")
            _wait(lambda: (self._health() or {}).get("ready"), START_TIMEOUT, "the models and workers")
        except BaseException:
            logs = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
                             for log in self.workdir.glob("*.log"))  # fmt: skip
            self.__exit__()
            raise RuntimeError(f"the deployment did not start:\n{logs}") from None
        return self

    def _health(self) -> dict[str, Any] | None:
        if any(proc.poll() is not None for proc in self.procs):
            raise RuntimeError("a process of the deployment exited")
        try:
            health: dict[str, Any] = self.client.get("/api/health", timeout=5).json()
        except httpx.HTTPError:
            return None
        return health

    def __exit__(self, *_: object) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.client.close()

    def upload(self, path: Path) -> str:
        with open(path, "rb") as file:
            response = self.client.post("/api/upload", files={"file": ("bench.wav", file, "audio/wav")})
        response.raise_for_status()
        audio_id: str = response.json()["audio_id"]
        _wait(lambda: self.client.get(f"/api/embedding/{audio_id}").status_code == 200, 120, "the embedding")
        return audio_id

    def run_jobs(self, audio_id: str, n: int, duration: float) -> tuple[float, list[dict[str, Any]]]:
        """Send n generations at once; (seconds until all completed, their final statuses)."""
        started = time.perf_counter()
        ids = [self.client.post(f"/api/generate/{audio_id}", json={"duration": duration, "seed": i}).json()
               ["generation_id"] for i in range(n)]  # fmt: skip
        done: dict[str, dict[str, Any]] = {}

        def all_done() -> bool:  # one list request per poll: the bench must not load the box it measures
            time.sleep(0.1)
            page = self.client.get("/api/generations", params={"audio_id": audio_id, "limit": 500}).json()
            for item in page["items"]:
                if item["generation_id"] in ids and item["status"] in ("completed", "failed", "cancelled"):
                    done[item["generation_id"]] = item
            return len(done) == n

        _wait(all_done, 1800, f"{n} generations")
        return time.perf_counter() - started, [done[job_id] for job_id in ids]


def measure(
    env: dict[str, str], n_workers: int, n_jobs: int, duration: float, workdir: Path, repeat: int = 3
) -> dict[str, float]:
    from motif.audio import write_audio

    song = workdir / "bench.wav"
    write_audio(song, (0.1 * np.sin(np.linspace(0, 2000, 8 * 32_000))).astype(np.float32), 32_000, "wav")
    with Deployment(env, n_workers, workdir) as deployment:
        audio_id = deployment.upload(song)
        for _ in range(n_workers or 1):  # warm-up, once per worker: first-use costs out of the figures
            deployment.run_jobs(audio_id, 1, duration)
        ones, walls = [], []
        for _ in range(repeat):  # the median of `repeat` rounds: a shared box swings between runs
            ones.append(deployment.run_jobs(audio_id, 1, duration)[0])
            wall, statuses = deployment.run_jobs(audio_id, n_jobs, duration)
            failed = [s for s in statuses if s["status"] != "completed"]
            if failed:
                raise RuntimeError(f"{len(failed)} jobs did not complete: {failed[0]}")
            walls.append(wall)
    wall, one = float(np.median(walls)), float(np.median(ones))
    return {"jobs_per_s": n_jobs / wall, "wall_s": wall, "one_job_s": one}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m motif.bench.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8, help="generations sent at once")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of audio per job")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per deployment; medians are reported")
    parser.add_argument("--embedded-only", action="store_true", help="skip the distributed runs")
    args = parser.parse_args(argv)
    base = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "DATABASE_URL", "STORAGE_URL")}
    base.setdefault("GENERATION_MODEL", "tiny")
    base.setdefault("EMBEDDING_MODEL", "tiny")
    base.setdefault("ALLOW_MODEL_DOWNLOAD", "false")
    distributed = {k: os.environ[k] for k in ("BROKER_URL", "DATABASE_URL", "STORAGE_URL") if os.environ.get(k)}
    runs: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="motif-bench-") as tmp:
        root = Path(tmp)
        plans: list[tuple[str, int, dict[str, str]]] = [("embedded", 0, {})]
        if not args.embedded_only:
            if len(distributed) < 3:
                parser.error("the distributed runs need BROKER_URL, DATABASE_URL and STORAGE_URL (or --embedded-only)")
            plans += [("distributed_1_worker", 1, distributed), ("distributed_2_workers", 2, distributed)]
        for name, n_workers, extra in plans:
            workdir = root / name
            workdir.mkdir()
            env = {**base, **extra, "DATA_DIR": str(workdir / "data")}
            print(f"{name}: {args.jobs} jobs of {args.duration:g} s ...", file=sys.stderr, flush=True)
            runs[name] = measure(env, n_workers, args.jobs, args.duration, workdir, args.repeat)
    embedded = runs["embedded"]["one_job_s"]
    for run in runs.values():
        run["overhead_s"] = run["one_job_s"] - embedded
    print(f"{'deployment':<24}{'jobs/s':>8}{'wall s':>9}{'1 job s':>9}{'overhead s':>12}")
    for name, run in runs.items():
        print(f"{name:<24}{run['jobs_per_s']:>8.3f}{run['wall_s']:>9.1f}{run['one_job_s']:>9.2f}"
              f"{run['overhead_s']:>12.2f}")
    print(json.dumps({"jobs": args.jobs, "duration": args.duration, "runs": runs}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
