"""Distributed settings: nonsense combinations are refused at start with the setting that fixes them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from motif.config import Settings
from motif.service.blobs import LocalBlobStore, open_blob_store

PG = "postgresql+psycopg://motif@db/motif"


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_the_default_is_embedded() -> None:
    settings = _settings()
    assert not settings.distributed and settings.storage_url is None


def test_a_broker_with_sqlite_is_refused() -> None:
    with pytest.raises(ValidationError, match="DATABASE_URL=postgresql"):
        _settings(broker_url="redis://localhost:6379/0", storage_url="s3://bucket/motif")


def test_a_broker_with_files_only_this_host_sees_is_refused() -> None:
    with pytest.raises(ValidationError, match="STORAGE_URL=s3://"):
        _settings(broker_url="redis://localhost:6379/0", database_url=PG)


def test_unknown_schemes_are_refused() -> None:
    with pytest.raises(ValidationError, match="BROKER_URL must start with"):
        _settings(broker_url="amqp://x", database_url=PG, storage_url="s3://b/p")
    with pytest.raises(ValidationError, match="STORAGE_URL must start with"):
        _settings(storage_url="gs://bucket")


def test_sensible_combinations_are_accepted(tmp_path: Path) -> None:
    assert _settings(broker_url="sqs://", database_url=PG, storage_url="s3://bucket/motif").distributed
    assert not _settings(database_url=PG).distributed  # PostgreSQL + files on one box
    shared = _settings(broker_url="redis://r:6379/0", database_url=PG, storage_url=f"file://{tmp_path}/shared")
    store = open_blob_store(shared.storage_url, tmp_path / "data")
    assert isinstance(store, LocalBlobStore) and store.root == tmp_path / "shared"
