"""Blob storage: files by key ("uploads/<id>.mp3"), written atomically. A local directory here; S3 beside it
(`motif.service.blobs_s3`); `open_blob_store` picks one from STORAGE_URL.

Keys are built by the service from ids it generated, never from client input, and are checked anyway.
"""

from __future__ import annotations

import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

AREAS = ("uploads", "processed", "generated")  # the seed's layout under DATA_DIR
DIR_MODE = 0o700  # only the server's user reads uploads and results
FILE_MODE = 0o600
TEMP_PREFIX = ".tmp-"
_KEY = re.compile(r"^(uploads|processed|generated)/[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


def check_key(key: str) -> str:
    """Raise ValueError unless `key` is `<area>/<plain file name>` (no separators, no dot files)."""
    if not _KEY.match(key) or ".." in key:
        raise ValueError(f"invalid blob key {key!r}")
    return key


class BlobStore(ABC):
    """Where uploads, processed audio and generated audio live."""

    @abstractmethod
    def staging(self, area: str) -> AbstractContextManager[Path]:
        """A local temp file to stream into (context manager); removed on exit unless `put_file` took it."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Move a staged local file to `key` atomically (readers see all of it or nothing)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write `data` to `key` atomically."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Open for reading. Raises FileNotFoundError."""

    @abstractmethod
    def local_path(self, key: str) -> Path | None:
        """The file on local disk (for ranged downloads), or None where blobs are remote."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; missing is fine."""

    @abstractmethod
    def entries(self, area: str) -> Iterator[tuple[str, datetime]]:
        """Every committed key in `area` (temp files excluded), with when it was written (UTC)."""

    def keys(self, area: str) -> Iterator[str]:
        return (key for key, _ in self.entries(area))

    @abstractmethod
    def sweep_temp(self) -> int:
        """Remove temp files a crashed process left behind; returns how many."""

    def size(self, key: str) -> int:
        """Bytes stored under `key`. Raises FileNotFoundError."""
        path = self.local_path(key)
        if path is None:
            raise NotImplementedError
        return path.stat().st_size

    def iter_range(self, key: str, start: int, end: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
        """Bytes start..end (inclusive) of `key`, in chunks: a download streamed without holding it whole."""
        with self.open(key) as file:
            file.seek(start)
            left = end - start + 1
            while left > 0 and (data := file.read(min(chunk, left))):
                left -= len(data)
                yield data

    def presigned_url(self, key: str, seconds: int, filename: str) -> str | None:
        """A URL anyone holding it may GET for `seconds`, or None where the store has no such thing."""
        return None


@contextmanager
def staged_file(directory: Path) -> Iterator[Path]:
    """A new empty temp file in `directory` (swept at start-up if a crash leaves it), removed on exit."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=".part")
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


class LocalBlobStore(BlobStore):
    """Blobs as files under `root` (DATA_DIR): root/uploads, root/processed, root/generated."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for area in AREAS:
            (self.root / area).mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            _make_private(self.root / area)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextmanager
    def staging(self, area: str) -> Iterator[Path]:
        if area not in AREAS:
            raise ValueError(f"unknown area {area!r}")
        with staged_file(self.root / area) as path:
            yield path

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        with open(path, "rb+") as file:
            os.fsync(file.fileno())
        os.chmod(path, FILE_MODE)
        os.replace(path, target)
        _fsync_dir(target.parent)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(name, FILE_MODE)
            os.replace(name, target)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def entries(self, area: str) -> Iterator[tuple[str, datetime]]:
        for entry in os.scandir(self.root / area):
            if entry.is_file() and not entry.name.startswith("."):
                yield f"{area}/{entry.name}", datetime.fromtimestamp(entry.stat().st_mtime, UTC)

    def sweep_temp(self) -> int:
        removed = 0
        for area in AREAS:
            for entry in os.scandir(self.root / area):
                if entry.name.startswith(TEMP_PREFIX):
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
        return removed


def _make_private(directory: Path) -> None:
    """Tighten a directory and the files older versions wrote world-readable (0755/0644)."""
    os.chmod(directory, DIR_MODE)
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mode & 0o077:
            os.chmod(entry.path, FILE_MODE)


def _fsync_dir(path: Path) -> None:
    # The rename itself must survive a power cut, not only the file's bytes.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_blob_store(storage_url: str | None, data_dir: Path, s3_endpoint_url: str | None = None) -> BlobStore:
    """The blob store STORAGE_URL names: unset = DATA_DIR; file:///path; s3://bucket/prefix."""
    if not storage_url:
        return LocalBlobStore(data_dir)
    if storage_url.startswith("file://"):
        return LocalBlobStore(Path(storage_url.removeprefix("file://")))
    from motif.service.blobs_s3 import S3BlobStore

    bucket, _, prefix = storage_url.removeprefix("s3://").partition("/")
    return S3BlobStore(bucket, prefix, data_dir / "staging", endpoint_url=s3_endpoint_url)
