"""Blobs in S3 (or an S3-compatible store such as MinIO), through boto3: the distributed twin of LocalBlobStore.

Uploads are received into a local staging file (they must be decoded anyway) and streamed to S3 in
multipart parts from disk, never held whole in memory. An S3 object appears only when its PUT or its
multipart upload completes, so readers never see a partial result under its final key.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, cast

from motif.service.blobs import AREAS, TEMP_PREFIX, BlobStore, check_key, staged_file

MiB = 1024 * 1024
PART_SIZE = 16 * MiB  # multipart part size: memory per upload stream is about one part per thread
SPOOL_IN_MEMORY = 8 * MiB  # `open` keeps smaller objects in memory, spills bigger ones to a temp file
ABANDONED_AFTER = timedelta(hours=6)  # incomplete multipart uploads older than this are aborted by sweep_temp


class S3BlobStore(BlobStore):
    """Blobs as objects `s3://bucket/prefix/<key>`; credentials from the standard AWS chain."""

    def __init__(self, bucket: str, prefix: str, staging_dir: Path, endpoint_url: str | None = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not bucket:
            raise ValueError("STORAGE_URL=s3://BUCKET/prefix needs a bucket name")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.staging_dir = Path(staging_dir)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        # Adaptive retries ride out S3's 503 SlowDown; connections are pooled per process and thread-safe.
        config = Config(retries={"max_attempts": 8, "mode": "adaptive"}, max_pool_connections=32)
        self.client: Any = boto3.client("s3", endpoint_url=endpoint_url, config=config)
        self.transfer = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=4)

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def staging(self, area: str) -> Iterator[Path]:
        if area not in AREAS:
            raise ValueError(f"unknown area {area!r}")
        with staged_file(self.staging_dir) as path:
            yield path

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._name(key), Config=self.transfer)
        path.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)

    def open(self, key: str) -> BinaryIO:
        """A seekable local copy (in memory up to 8 MiB, then on disk), as decoders want to seek."""
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=str(self.staging_dir))  # noqa: SIM115
        try:
            self.client.download_fileobj(self.bucket, self._name(key), spool, Config=self.transfer)
        except Exception as error:
            spool.close()
            if _is_missing(error):
                raise FileNotFoundError(key) from error
            raise
        spool.seek(0)
        return cast(BinaryIO, spool)

    def local_path(self, key: str) -> Path | None:
        return None

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except Exception as error:
            if _is_missing(error):
                return False
            raise
        return True

    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._name(key))["ContentLength"])
        except Exception as error:
            if _is_missing(error):
                raise FileNotFoundError(key) from error
            raise

    def iter_range(self, key: str, start: int, end: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._name(key), Range=f"bytes={start}-{end}")["Body"]
        try:
            yield from body.iter_chunks(chunk)
        finally:
            body.close()

    def presigned_url(self, key: str, seconds: int, filename: str) -> str | None:
        params = {"Bucket": self.bucket, "Key": self._name(key),
                  "ResponseContentDisposition": f'attachment; filename="{filename}"'}  # fmt: skip
        url: str = self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=seconds)
        return url

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._name(key))  # missing is fine in S3

    def entries(self, area: str) -> Iterator[tuple[str, datetime]]:
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{base}{area}/")
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"][len(base):], item["LastModified"]

    def sweep_temp(self) -> int:
        """Abort multipart uploads abandoned by a killed process (their parts cost storage until aborted)."""
        cutoff = datetime.now(UTC) - ABANDONED_AFTER
        listing = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        aborted = 0
        for upload in listing.get("Uploads", []):
            if upload["Initiated"] < cutoff:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted += 1
        for entry in os.scandir(self.staging_dir):
            if entry.name.startswith(TEMP_PREFIX):
                Path(entry.path).unlink(missing_ok=True)
        return aborted


def _is_missing(error: Exception) -> bool:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound")
