"""A real cluster on loopback: Redis, PostgreSQL and moto's S3 server, one API process and worker processes.

Everything is started here and stopped at the end; a service that cannot start fails the tests with the
reason (tests/services.py), never skips them.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import httpx
import pytest

from tests.e2e.server import Server, server_env
from tests.service.conftest import wait_until
from tests.services import S3_BUCKET, S3_ENV, Service, create_database
from tests.webhook_receiver import SECRET

ROOT = Path(__file__).resolve().parents[2]
BUCKET = S3_BUCKET
PREFIX = "cluster"
LEASE_SECONDS = 3  # short, so a killed worker's job moves on quickly
MAX_ATTEMPTS = 2


class Worker(Server):
    """`motif worker` in a subprocess, ready once Celery says so."""

    def __init__(self, workdir: Path, env: dict[str, str], name: str, extra: list[str] | None = None) -> None:
        super().__init__(workdir, env, [sys.executable, *(extra or ["-m", "motif.cli"]), "worker",
                                        "--hostname", f"{name}@%h", "--concurrency", "5"])  # fmt: skip
        self.name = name
        self.log_path = workdir / f"{name}.log"

    def start(self, ready: bool = True) -> Worker:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it for its whole life
        self._log_from = log.tell()  # a restarted worker appends: only this start's lines tell it is ready
        import subprocess

        self.proc = subprocess.Popen(self.cmd, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if ready:
            wait_until(self._ready, timeout=180, interval=0.2, what=f"worker {self.name}\n{self.log()}")
        return self

    def _ready(self) -> bool:
        # The log first: a worker that said ready and then died on its first job (the crashing worker does, within
        # one poll interval) did start; the caller watches what happens next.
        if " ready." in self.log_path.read_bytes()[self._log_from :].decode(errors="replace"):
            return True
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()}")
        return False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Cluster:
    def __init__(self, workdir: Path, env: dict[str, str], s3: Service) -> None:
        self.workdir, self.env = workdir, env
        self.prefix = env["STORAGE_URL"].removeprefix(f"s3://{BUCKET}/")
        self.api = Server(workdir, env)
        self.workers: dict[str, Worker] = {}
        self.s3 = boto3.client("s3", endpoint_url=s3.url, aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                               aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
                               region_name=S3_ENV["AWS_DEFAULT_REGION"])  # fmt: skip

    @property
    def client(self) -> httpx.Client:
        return self.api.client

    def start_worker(self, name: str, extra: list[str] | None = None, ready: bool = True) -> Worker:
        worker = Worker(self.workdir, self.env, name, extra).start(ready)
        self.workers[name] = worker
        return worker

    def objects(self, area: str) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{self.prefix}/{area}/")
        return [item["Key"] for item in listing.get("Contents", [])]

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()
        self.api.close()


def cluster_env(
    workdir: Path, database: str, broker_url: str, s3: Service, model_cache: Path, prefix: str = PREFIX
) -> dict[str, str]:
    return server_env(workdir / "data", model_cache, BROKER_URL=broker_url, DATABASE_URL=database,
                      STORAGE_URL=f"s3://{BUCKET}/{prefix}", S3_ENDPOINT_URL=s3.url,
                      JOB_LEASE_SECONDS=str(LEASE_SECONDS), MAX_JOB_ATTEMPTS=str(MAX_ATTEMPTS), MAX_BATCH_SIZE="4",
                      EMBEDDING_WAIT_SECONDS="20", WEBHOOK_SECRET=SECRET, WEBHOOK_ALLOW_PRIVATE="true",
                      PYTHONPATH=f"{ROOT}:{ROOT / 'src'}", **S3_ENV)  # fmt: skip


@contextmanager
def running_cluster(workdir: Path, env: dict[str, str], s3: Service, workers: list[str]) -> Iterator[Cluster]:
    running = Cluster(workdir, env, s3)
    try:
        running.api.start(ready=False)
        for name in workers:
            running.start_worker(name)
        wait_until(lambda: running.client.get("/api/health").json()["ready"], timeout=60, what="the cluster ready")
        yield running
    finally:
        running.close()


@pytest.fixture(scope="package")
def cluster(
    redis: Service, postgres: Service, s3: Service, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """API + two workers (w1, w2) on Redis + PostgreSQL + S3, tiny models."""
    workdir = tmp_path_factory.mktemp("cluster")
    database = create_database(postgres, f"cluster_{uuid.uuid4().hex[:8]}")
    with running_cluster(workdir, cluster_env(workdir, database, redis.url, s3, model_cache), s3, ["w1", "w2"]) as c:
        yield c
