"""What the server stores is readable by its own user only: blob directories 0700, blobs and database 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from motif.service.blobs import AREAS, LocalBlobStore
from motif.service.runtime import close_services, open_services
from tests.service.conftest import tiny_settings


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_blobs_are_private_and_older_loose_ones_are_tightened(tmp_path: Path) -> None:
    old = tmp_path / "uploads"
    old.mkdir(mode=0o755)
    os.chmod(old, 0o755)
    (old / "legacy.mp3").write_bytes(b"x")
    os.chmod(old / "legacy.mp3", 0o644)
    store = LocalBlobStore(tmp_path)
    assert all(_mode(tmp_path / area) == 0o700 for area in AREAS)
    assert _mode(old / "legacy.mp3") == 0o600
    store.put_bytes("generated/a.wav", b"audio")
    with store.staging("processed") as staged:
        staged.write_bytes(b"npy")
        store.put_file("processed/a.npy", staged)
    assert _mode(tmp_path / "generated" / "a.wav") == 0o600 and _mode(tmp_path / "processed" / "a.npy") == 0o600


def test_the_sqlite_database_and_its_wal_are_private(tmp_path: Path, model_cache: Path) -> None:
    settings = tiny_settings(model_cache, tmp_path / "data")
    services = open_services(settings, start_workers=False)
    try:
        services.queue.depth()  # a read: the WAL and shared-memory files exist now
        files = [p for p in (tmp_path / "data").iterdir() if p.name.startswith("motif.db")]
        assert {p.name for p in files} >= {"motif.db"}
        assert all(_mode(p) == 0o600 for p in files), {p.name: oct(_mode(p)) for p in files}
        assert _mode(tmp_path / "data") == 0o700
    finally:
        close_services(services)
