"""Real SQLite files in a temp dir, and the service objects over them with tiny models."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from motif.config import Settings
from motif.service.jobs import JobKind, JobQueue
from motif.service.store import AudioRow, Database, new_id

T = TypeVar("T")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'motif.db'}")
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def queue(db: Database) -> JobQueue:
    return JobQueue(db, max_attempts=3)


def add_audio(db: Database, audio_id: str | None = None) -> str:
    """A row as an upload would leave it (the files are not needed by the queries under test)."""
    audio_id = audio_id or new_id()
    with db.transaction() as session:
        row = AudioRow(id=audio_id, filename="song.wav", size_bytes=1, duration=1.0, sample_rate=32_000, channels=1,
                       codec="pcm_s16le", container="wav", analysis={"duration": 1.0},
                       upload_key=f"uploads/{audio_id}.wav", processed_key=f"processed/{audio_id}.npy")  # fmt: skip
        session.add(row)
    return audio_id


def tiny_settings(model_cache: Path, data_dir: Path, **overrides: object) -> Settings:
    base: dict[str, object] = dict(generation_model="tiny", embedding_model="tiny", model_cache_dir=model_cache,
                                   device="cpu", allow_model_download=False, num_threads=1,
                                   data_dir=data_dir)  # fmt: skip
    return Settings(_env_file=None, **{**base, **overrides})  # type: ignore[arg-type]


def wait_until(predicate: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.05, what: str = "") -> T:
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)


def claim_concurrently(queue: JobQueue, threads: int, batch: int) -> list[str]:
    """Every generation id that `threads` threads claimed, `batch` at a time, until the queue ran dry."""
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer() -> None:
        while jobs := queue.claim(JobKind.GENERATION, batch):
            with lock:
                claimed.extend(job.id for job in jobs)

    running = [threading.Thread(target=claimer) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    return claimed
