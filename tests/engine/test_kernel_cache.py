"""The kernel cache loads only libraries that are ours, private and intact; anything else is rebuilt or refused.

Each test plants an "evil" library (one that answers 666) where the cache would look, making it fail
exactly one check, and asserts the library that gets loaded answers 42: the planted one was never loaded.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest

from motif.engine import kernels
from motif.engine.kernel_cache import (
    UnsafeCacheError,
    build_digest,
    cache_root,
    load_or_build,
    private_dir,
)

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

GOOD = "int answer(void) { return 42; }\n"
WITH_HEADER = '#include "answer.h"\nint answer(void) { return ANSWER; }\n'
EVIL = "int answer(void) { return 666; }\n"
FLAGS = ["-O1", "-shared", "-fPIC"]
OTHER_UID = 4242


def _load(source: str, root: Path) -> ctypes.CDLL:
    return load_or_build(source, "test", _gcc(), FLAGS, root)


def _gcc() -> str:
    found = shutil.which("gcc")
    assert found is not None
    return found


def _answer(library: ctypes.CDLL) -> int:
    return int(library.answer())


def _plant_evil(root: Path, tmp_path: Path) -> Path:
    """A library answering 666, named as a build of GOOD with its own correct content hash."""
    evil = _load(EVIL, tmp_path / "evil-cache")
    built = next((tmp_path / "evil-cache").glob("test-*.so"))
    data = built.read_bytes()
    assert _answer(evil) == 666
    private_dir(root)
    planted = root / f"test-{build_digest(GOOD, _gcc(), FLAGS)}-{hashlib.sha256(data).hexdigest()}.so"
    planted.write_bytes(data)
    os.chmod(planted, 0o500)
    return planted


def test_cache_dir_follows_xdg_cache_home_and_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = cache_root()
    assert root == tmp_path / "xdg" / "motif" / "kernels"
    assert _answer(_load(GOOD, root)) == 42
    for directory in (root, root.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    (library,) = root.glob("test-*.so")
    assert stat.S_IMODE(library.stat().st_mode) & 0o022 == 0
    assert library.name.endswith(hashlib.sha256(library.read_bytes()).hexdigest() + ".so")
    assert [p.name for p in root.iterdir()] == [library.name]  # the mkdtemp build directory is gone
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec says: ignore relative paths
    assert cache_root() == Path.home() / ".cache" / "motif" / "kernels"


def test_a_trusted_library_is_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "cache" / "kernels"
    _load(GOOD, root)
    (first,) = root.glob("test-*.so")
    mtime = first.stat().st_mtime_ns
    caplog.clear()  # the first build's line, captured when an earlier test left motif's loggers at INFO
    with caplog.at_level(logging.INFO, logger="motif.engine.kernel_cache"):
        assert _answer(_load(GOOD, root)) == 42
    assert not caplog.records  # neither a rebuild nor a refusal
    assert first.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("spoil", ["tampered", "other_owner", "group_writable", "world_writable", "symlink"])
def test_a_bad_library_is_refused_with_a_reason_and_rebuilt(
    spoil: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "cache" / "kernels"
    planted = _plant_evil(root, tmp_path)
    expected = {"tampered": "does not match the hash", "other_owner": f"belongs to uid {OTHER_UID}",
                "group_writable": "group- or world-writable", "world_writable": "group- or world-writable",
                "symlink": "cannot be opened safely"}[spoil]  # fmt: skip
    if spoil == "tampered":  # same name, other bytes: its content no longer hashes to the name
        os.chmod(planted, 0o700)
        with open(planted, "ab") as file:
            file.write(b"\0")
        os.chmod(planted, 0o500)
    elif spoil == "other_owner":
        if os.geteuid() != 0:
            pytest.skip("chown to another uid needs root")
        os.chown(planted, OTHER_UID, OTHER_UID)
    elif spoil == "group_writable":
        os.chmod(planted, 0o520)
    elif spoil == "world_writable":
        os.chmod(planted, 0o502)
    else:  # a symlink to a library that is itself fine: the cache never follows links
        target = tmp_path / "elsewhere.so"
        shutil.copy(planted, target)
        planted.unlink()
        planted.symlink_to(target)
    if spoil != "tampered":  # prove the plant would pass every other check: it is the evil library
        assert planted.name.endswith(hashlib.sha256(planted.read_bytes()).hexdigest() + ".so")
    with caplog.at_level(logging.WARNING, logger="motif.engine.kernel_cache"):
        library = _load(GOOD, root)
    assert _answer(library) == 42
    assert any(expected in r.getMessage() and str(planted) in r.getMessage() for r in caplog.records), caplog.text
    assert not planted.exists() and not planted.is_symlink()


def test_another_users_cache_directory_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    root = tmp_path / "cache" / "kernels"
    planted = _plant_evil(root, tmp_path)
    os.chown(root, OTHER_UID, OTHER_UID)
    with pytest.raises(UnsafeCacheError, match=f"belongs to uid {OTHER_UID}"):
        _load(GOOD, root)
    assert planted.exists()  # not ours to clean up


def test_a_loose_cache_directory_is_made_private(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "cache" / "kernels"
    root.mkdir(parents=True)
    os.chmod(root, 0o777)
    with caplog.at_level(logging.WARNING, logger="motif.engine.kernel_cache"):
        assert _answer(_load(GOOD, root)) == 42
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert "made 0700" in caplog.text


def test_a_library_built_from_other_source_or_flags_is_not_used(tmp_path: Path) -> None:
    root = tmp_path / "cache" / "kernels"
    assert _answer(_load(EVIL, root)) == 666
    assert _answer(_load(GOOD, root)) == 42
    assert _answer(load_or_build(GOOD, "test", _gcc(), [*FLAGS, "-DOTHER"], root)) == 42
    assert len(list(root.glob("test-*.so"))) == 3


def test_build_directories_a_killed_build_left_are_swept(tmp_path: Path) -> None:
    root = private_dir(tmp_path / "cache" / "kernels")
    stale, fresh = root / ".build-stale", root / ".build-running"
    for directory in (stale, fresh):
        directory.mkdir()
        (directory / "library.so").write_bytes(b"half")
    os.utime(stale, (0, 0))
    assert _answer(_load(GOOD, root)) == 42
    assert not stale.exists() and fresh.exists()  # another process may be building in it now


def test_a_header_is_compiled_beside_the_source_and_every_byte_of_it_is_in_the_key(tmp_path: Path) -> None:
    root = tmp_path / "cache" / "kernels"

    def load(header: str) -> ctypes.CDLL:
        return load_or_build(WITH_HEADER, "test", _gcc(), FLAGS, root, headers={"answer.h": header})

    assert _answer(load("#define ANSWER 42\n")) == 42
    assert _answer(load("#define ANSWER 666\n")) == 666  # not the library cached from the first header
    assert _answer(load("#define ANSWER 42 \n")) == 42  # one more byte: the same answer, but its own build
    assert len(list(root.glob("test-*.so"))) == 3
    assert _answer(load("#define ANSWER 42\n")) == 42 and len(list(root.glob("test-*.so"))) == 3  # reused
    digests = {build_digest(WITH_HEADER, _gcc(), FLAGS, {name: "#define ANSWER 42\n"}) for name in ("a.h", "b.h")}
    assert len(digests) == 2  # the name counts too: it is what the source includes


@pytest.mark.parametrize("name", ["../answer.h", "/tmp/answer.h", "sub/answer.h", "..", "", "source.c"])
def test_a_header_name_that_is_not_a_plain_file_name_is_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        load_or_build(WITH_HEADER, "test", _gcc(), FLAGS, tmp_path / "cache", headers={name: "#define ANSWER 1\n"})
    assert not (tmp_path / "cache").exists() and not (tmp_path / "answer.h").exists()


def test_editing_the_kernels_shared_header_rebuilds_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kernels_common.h is part of both libraries' key: an edited header never reuses the library built before."""
    for name in ("kernels_avx2.c", "kernels_common.h"):
        shutil.copy(Path(kernels.__file__).with_name(name), tmp_path / name)
    header = tmp_path / "kernels_common.h"
    monkeypatch.setattr(kernels, "_COMMON_HEADER", header)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    built = tmp_path / "xdg" / "motif" / "kernels"
    kernels._compile_and_bind(tmp_path / "kernels_avx2.c", kernels._AVX2_FLAGS)  # builds; loading runs nothing
    (first,) = built.glob("kernels_avx2-*.so")
    kernels._compile_and_bind(tmp_path / "kernels_avx2.c", kernels._AVX2_FLAGS)
    assert list(built.glob("kernels_avx2-*.so")) == [first]  # unchanged: the cached library
    header.write_text(header.read_text().replace("enum { STORE = 0", "enum { STORE = 0 /* edited */", 1))
    library = kernels._compile_and_bind(tmp_path / "kernels_avx2.c", kernels._AVX2_FLAGS)
    assert len(list(built.glob("kernels_avx2-*.so"))) == 2 and Path(library._name) != first  # a new build
