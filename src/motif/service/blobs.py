"""Blob storage: files by key ("uploads/<id>.mp3"), written atomically. A local directory now; S3 later.

Keys are built by the service from ids it generated, never from client input, and are checked anyway.
"""

from __future__ import annotations

import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
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
    def keys(self, area: str) -> Iterator[str]:
        """Every committed key in `area` (temp files excluded)."""

    @abstractmethod
    def sweep_temp(self) -> int:
        """Remove temp files a crashed process left behind; returns how many."""


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
        fd, name = tempfile.mkstemp(dir=self.root / area, prefix=TEMP_PREFIX, suffix=".part")
        os.close(fd)
        path = Path(name)
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

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

    def keys(self, area: str) -> Iterator[str]:
        for entry in os.scandir(self.root / area):
            if entry.is_file() and not entry.name.startswith("."):
                yield f"{area}/{entry.name}"

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
