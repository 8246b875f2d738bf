"""Shared fixtures: one thread for torch, a session-wide cache of tiny models, seeded generators."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.services import S3_BUCKET, Service, create_bucket, start_postgres, start_redis, start_s3

# On a loaded 2-core box, two intra-op threads made tiny models ~50x slower; one is plenty for them.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models are built once per test session (or reused from MOTIF_TEST_MODEL_CACHE)."""
    shared = os.environ.get("MOTIF_TEST_MODEL_CACHE")
    return Path(shared) if shared else tmp_path_factory.mktemp("models")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(1234)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Service]:
    """A real PostgreSQL server (with pgvector) on loopback for the session; fails with the reason if it cannot."""
    service = start_postgres()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def redis() -> Iterator[Service]:
    """A real redis-server on loopback for the session."""
    service = start_redis()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[Service]:
    """moto's S3 server on loopback for the session, with the bucket S3_BUCKET."""
    service = start_s3()
    create_bucket(service, S3_BUCKET)
    yield service
    service.stop()
