"""Build a C source into a shared library once per user, and load it only when it is provably ours.

The cache lives in `$XDG_CACHE_HOME/motif/kernels` (default `~/.cache/motif/kernels`), directories 0700.
A library is named after what it was built from and what it contains, `<stem>-<build digest>-<sha256>.so`
(build digest: source text, the headers it includes, compiler and flags). Before dlopen the file is opened once
(no symlinks), checked (regular file, owned by this user, not group- or world-writable, in a directory that passes
the same checks) and hashed, then loaded by its path if that is still the inode checked. A file that fails a
check is logged with the reason and removed (the directory is ours), then the library is rebuilt; a
directory we do not own refuses the cache outright.
Builds write the source and its headers into a mkdtemp directory (the compiler reads nothing else of ours:
`#include "name.h"` finds the copy beside the source) and land with one atomic rename.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

BUILD_TIMEOUT = 300.0  # seconds for one gcc run
_UNSAFE_BITS = stat.S_IWGRP | stat.S_IWOTH


class UnsafeCacheError(RuntimeError):
    """The cache directory cannot be trusted (another user's, or writable by others and not ours to fix)."""


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/motif/kernels`, else `~/.cache/motif/kernels`.

    Read from the environment here: XDG_CACHE_HOME is the platform's convention, not a Motif setting.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"  # the spec ignores relative
    return base / "motif" / "kernels"


def build_digest(source: str, compiler: str, flags: list[str], headers: Mapping[str, str] | None = None) -> str:
    """16 hex characters naming what a library was built from: any byte of the source, of a header's name or
    text, of the compiler or of a flag changes them."""
    built_from = json.dumps([source, compiler, flags, sorted((headers or {}).items())])  # unambiguous joins
    return hashlib.sha256(built_from.encode()).hexdigest()[:16]


def load_or_build(source: str, stem: str, compiler: str, flags: list[str], root: Path | None = None,
                  headers: Mapping[str, str] | None = None) -> ctypes.CDLL:  # fmt: skip
    """The library built from `source` with `compiler flags`, from the cache when a trusted copy is there.

    headers: file name -> text of each header the source includes as `#include "name"`, written beside it.
    Raises ValueError (a header name that is not a plain file name), UnsafeCacheError (cache directory not
    trustworthy), RuntimeError (the compiler failed), OSError, subprocess.TimeoutExpired.
    """
    headers = dict(headers or {})
    for name in headers:
        if name in ("", ".", "..", "source.c", "library.so") or Path(name).name != name:
            raise ValueError(f"header name {name!r} must be a plain file name")
    directory = private_dir(root or cache_root())
    prefix = f"{stem}-{build_digest(source, compiler, flags, headers)}-"
    for path in sorted(directory.glob(prefix + "*.so")):
        library = _load_verified(path, prefix)
        if library is not None:
            return library
    _sweep_stale_builds(directory)
    path = _build(source, headers, directory, prefix, compiler, flags)
    library = _load_verified(path, prefix)
    if library is None:
        raise UnsafeCacheError(f"the library just built at {path} failed its own checks")
    return library


def private_dir(path: Path) -> Path:
    """Create `path` and its parent 0700; make our own loose directories 0700; refuse another user's."""
    for directory in (path.parent, path):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafeCacheError(f"kernel cache {directory} is not a directory (a symlink?)")
        if info.st_uid != os.geteuid():
            raise UnsafeCacheError(f"kernel cache {directory} belongs to uid {info.st_uid}, not to this user")
        if stat.S_IMODE(info.st_mode) & 0o077:
            log.warning("kernel cache %s was mode %o; made 0700", directory, stat.S_IMODE(info.st_mode))
            os.chmod(directory, 0o700)
    return path


def _load_verified(path: Path, prefix: str) -> ctypes.CDLL | None:
    """dlopen `path` if it passes every check, else log why, remove it and return None."""
    expected = path.name[len(prefix) : -len(".so")]
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        _reject(path, f"cannot be opened safely ({error.strerror})")
        return None
    try:
        reason = _refusal(fd, expected)
        if reason is None:
            checked, current = os.fstat(fd), os.lstat(path)
            if (current.st_dev, current.st_ino) != (checked.st_dev, checked.st_ino):
                reason = "was replaced while being checked"
        if reason is not None:
            _reject(path, reason)
            return None
        # By path, not /proc/self/fd/N: glibc's dlopen reuses any library loaded under the same name, and fd
        # numbers repeat. The directory is ours and 0700, so only this user could swap the file now.
        return ctypes.CDLL(str(path))
    finally:
        os.close(fd)


def _refusal(fd: int, expected_sha256: str) -> str | None:
    """Why the open library must not be loaded, or None."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_uid != os.geteuid():
        return f"belongs to uid {info.st_uid}, not to this user"
    if info.st_mode & _UNSAFE_BITS:
        return f"is group- or world-writable (mode {stat.S_IMODE(info.st_mode):o})"
    digest = hashlib.sha256()
    with os.fdopen(os.dup(fd), "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected_sha256:
        return "does not match the hash in its name (tampered or truncated)"
    return None


def _reject(path: Path, reason: str) -> None:
    log.warning("refusing to load the cached kernel %s: it %s; rebuilding it", path, reason)
    path.unlink(missing_ok=True)
    return None


def _sweep_stale_builds(directory: Path) -> None:
    """Remove build directories a killed process left (older than any build can take)."""
    cutoff = time.time() - 2 * BUILD_TIMEOUT
    for stale in directory.glob(".build-*"):
        if stale.is_dir() and not stale.is_symlink() and stale.stat().st_mtime < cutoff:
            shutil.rmtree(stale, ignore_errors=True)


def _build(source: str, headers: dict[str, str], directory: Path, prefix: str, compiler: str,
           flags: list[str]) -> Path:  # fmt: skip
    """Compile in a private temp directory, then rename into the cache under its content hash."""
    work = Path(tempfile.mkdtemp(dir=directory, prefix=".build-"))
    try:
        for name, text in headers.items():  # the very text the digest covers, not the file as it is now
            (work / name).write_text(text)
        source_path = work / "source.c"
        source_path.write_text(source)
        output = work / "library.so"
        try:
            subprocess.run([compiler, *flags, str(source_path), "-o", str(output), "-lm"], check=True,
                           capture_output=True, timeout=BUILD_TIMEOUT)  # fmt: skip
        except subprocess.CalledProcessError as error:
            raise RuntimeError(f"{compiler} failed: {error.stderr.decode(errors='replace')[-500:]}") from error
        os.chmod(output, 0o500)
        sha256 = hashlib.sha256(output.read_bytes()).hexdigest()
        target = directory / f"{prefix}{sha256}.so"
        os.replace(output, target)  # atomic: a concurrent loader never sees half a library
        log.info("built %s", target)
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)
