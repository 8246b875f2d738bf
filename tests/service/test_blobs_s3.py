"""S3BlobStore against a real S3 server (moto's, on loopback): multipart uploads, atomic results, ranges."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.responses import RedirectResponse, StreamingResponse

from motif.config import Settings
from motif.service.api.blob_response import blob_response
from motif.service.blobs_s3 import PART_SIZE, S3BlobStore
from motif.service.retention import ORPHAN_AGE
from motif.service.runtime import sweep_orphans
from motif.service.store import Database, utcnow
from tests.service.conftest import add_audio
from tests.services import S3_BUCKET, S3_ENV, Service


@pytest.fixture
def store(s3: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3BlobStore]:
    for name, value in S3_ENV.items():
        monkeypatch.setenv(name, value)  # the standard AWS chain, as in production
    yield S3BlobStore(S3_BUCKET, f"t{uuid.uuid4().hex[:8]}", tmp_path / "staging", endpoint_url=s3.url)


def test_a_staged_upload_goes_up_in_parts_and_leaves_no_local_file(store: S3BlobStore) -> None:
    data = os.urandom(PART_SIZE + 1234)  # over the multipart threshold: two parts
    with store.staging("uploads") as staged:
        staged.write_bytes(data)
        store.put_file("uploads/a.wav", staged)
        assert not staged.exists()
    assert store.size("uploads/a.wav") == len(data)
    with store.open("uploads/a.wav") as file:
        assert file.read() == data
    assert list(store.keys("uploads")) == ["uploads/a.wav"] and list(store.keys("generated")) == []
    assert list(os.scandir(store.staging_dir)) == []


def test_results_ranges_delete_and_missing_keys(store: S3BlobStore) -> None:
    store.put_bytes("generated/g.wav", b"0123456789")
    assert store.exists("generated/g.wav")
    assert b"".join(store.iter_range("generated/g.wav", 2, 5)) == b"2345"
    store.delete("generated/g.wav")
    store.delete("generated/g.wav")  # missing is fine
    assert not store.exists("generated/g.wav")
    with pytest.raises(FileNotFoundError):
        store.open("generated/g.wav")
    with pytest.raises(FileNotFoundError):
        store.size("generated/g.wav")
    with pytest.raises(ValueError):
        store.put_bytes("../etc/passwd", b"")


def test_downloads_stream_with_ranges_or_redirect_to_a_presigned_url(store: S3BlobStore) -> None:
    store.put_bytes("generated/g.wav", b"RIFF" + bytes(range(200)))
    plain = Settings(_env_file=None)  # type: ignore[call-arg]
    partial = blob_response(store, plain, "generated/g.wav", "audio/wav", "g.wav", "bytes=4-9")
    assert isinstance(partial, StreamingResponse) and partial.status_code == 206
    assert partial.headers["content-range"] == "bytes 4-9/204" and partial.headers["content-length"] == "6"
    redirect = Settings(_env_file=None, download_redirect=True)  # type: ignore[call-arg]
    response = blob_response(store, redirect, "generated/g.wav", "audio/wav", "g.wav", None)
    assert isinstance(response, RedirectResponse) and response.status_code == 302
    fetched = httpx.get(response.headers["location"])
    assert fetched.status_code == 200 and fetched.content == b"RIFF" + bytes(range(200))


def test_a_cluster_sweep_removes_only_old_files_that_no_row_points_at(store: S3BlobStore, db: Database) -> None:
    audio_id = add_audio(db)
    for key in (f"uploads/{audio_id}.wav", f"processed/{audio_id}.npy", "uploads/lost.wav", "generated/lost.wav"):
        store.put_bytes(key, b"x")
    assert sweep_orphans(db, store, older_than=ORPHAN_AGE) == 0  # written just now: maybe a row is coming
    later = utcnow() + ORPHAN_AGE + timedelta(minutes=1)
    assert sweep_orphans(db, store, older_than=ORPHAN_AGE, now=later) == 2
    kept = sorted(key for area in ("uploads", "processed", "generated") for key in store.keys(area))
    assert kept == [f"processed/{audio_id}.npy", f"uploads/{audio_id}.wav"]
