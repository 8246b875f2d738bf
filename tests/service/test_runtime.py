"""The service objects in-process with tiny models: workers, batching, cancel, shutdown, start-up housekeeping."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from motif.audio import load_audio
from motif.service import library
from motif.service.ingest import clean_filename, ingest_upload
from motif.service.jobs import JobStatus
from motif.service.runtime import DataDirBusyError, Services, close_services, open_services
from motif.service.store import EVERYONE, AudioRow
from tests.service.conftest import tiny_settings, wait_until
from tests.synth import music_like, write_format


@pytest.fixture
def services(model_cache: Path, tmp_path: Path) -> Iterator[Services]:
    opened = open_services(tiny_settings(model_cache, tmp_path / "data"))
    yield opened
    close_services(opened)


def _upload(services: Services, tmp_path: Path, seconds: float = 8.0) -> AudioRow:
    path = write_format(tmp_path / "song.flac", music_like(seconds, 44_100, seed=2), 44_100, "flac")
    with services.blobs.staging("uploads") as staged:
        shutil.copyfile(path, staged)
        return ingest_upload(services, staged, "../../song.flac", path.stat().st_size)


def _status(services: Services, job_id: str) -> str:
    job = services.queue.get(job_id)
    return "gone" if job is None else job.status


def _generate(services: Services, audio_id: str, duration: float) -> str:
    job = library.create_generation(services, EVERYONE, audio_id, {"duration": duration, "seed": 1})
    assert job is not None
    return job.id


def test_the_embedding_worker_stores_the_same_vector_as_the_engine(services: Services, tmp_path: Path) -> None:
    row = _upload(services, tmp_path)
    assert row.filename == "song.flac" and row.sample_rate == 44_100  # the client's path is dropped
    found = wait_until(lambda: library.lookup_embedding(services, EVERYONE, row.id, False).embedding,
                       what="the embedding")
    decoded = load_audio(tmp_path / "song.flac")
    expected = services.engine.embed_audio(decoded.samples, decoded.sample_rate)
    assert found.dim == 512 and np.allclose(found.array(), expected, atol=1e-6)


def test_a_generation_queued_while_another_runs_joins_its_batch(services: Services, tmp_path: Path) -> None:
    audio_id = _upload(services, tmp_path).id
    long = _generate(services, audio_id, 30.0)
    wait_until(lambda: (job := services.queue.get(long)) and job.progress > 5, what="the long generation to run")
    short = _generate(services, audio_id, 5.0)
    wait_until(lambda: _status(services, short) == JobStatus.COMPLETED, what="the short generation")
    assert _status(services, long) == JobStatus.PROCESSING  # it did not wait for the long one to finish
    wait_until(lambda: _status(services, long) == JobStatus.COMPLETED, what="the long generation")
    for job_id, seconds in ((long, 30.0), (short, 5.0)):
        job = services.queue.get(job_id)
        assert job is not None and job.output_key is not None and job.attempts == 1
        info = sf.info(io.BytesIO(services.blobs.open(job.output_key).read()))
        assert info.samplerate == 32_000 and info.frames == seconds * 32_000


def test_cancelling_a_running_generation_stops_it_and_leaves_no_file(services: Services, tmp_path: Path) -> None:
    job_id = _generate(services, _upload(services, tmp_path).id, 60.0)
    wait_until(lambda: _status(services, job_id) == JobStatus.PROCESSING, what="the generation to start")
    assert services.queue.request_cancel(job_id) is JobStatus.PROCESSING
    services.workers.cancel(job_id)
    wait_until(lambda: _status(services, job_id) == JobStatus.CANCELLED, timeout=10, what="the cancel")
    assert list(services.blobs.keys("generated")) == []


def test_shutdown_gives_a_running_generation_back_to_the_queue(model_cache: Path, tmp_path: Path) -> None:
    settings = tiny_settings(model_cache, tmp_path / "data")
    services = open_services(settings)
    job_id = _generate(services, _upload(services, tmp_path).id, 60.0)
    wait_until(lambda: (job := services.queue.get(job_id)) and job.progress > 0, what="the generation to run")
    close_services(services)
    job = services.queue.get(job_id)
    assert job is not None and job.status == JobStatus.QUEUED and job.attempts == 0  # a clean stop is no attempt
    services = open_services(settings.model_copy(update={"max_job_attempts": 1}), start_workers=False)
    try:
        assert services.queue.get(job_id).status == JobStatus.QUEUED  # type: ignore[union-attr]
    finally:
        close_services(services)


def test_one_data_dir_serves_one_process(model_cache: Path, tmp_path: Path) -> None:
    settings = tiny_settings(model_cache, tmp_path / "data")
    first = open_services(settings, start_workers=False)
    try:
        with pytest.raises(DataDirBusyError, match="already using"):
            open_services(settings, start_workers=False)
    finally:
        close_services(first)
    close_services(open_services(settings, start_workers=False))  # free again once the first is closed


def test_start_up_removes_what_a_killed_process_left_half_done(model_cache: Path, tmp_path: Path) -> None:
    settings = tiny_settings(model_cache, tmp_path / "data")
    services = open_services(settings, start_workers=False)
    row = _upload(services, tmp_path)
    close_services(services)
    data = settings.data_dir
    orphans = [data / "uploads" / "0123abcd.wav", data / "generated" / "feedbeef.wav", data / "uploads" / ".tmp-1.part"]
    for orphan in orphans:
        orphan.write_bytes(b"left behind")
    close_services(open_services(settings, start_workers=False))
    assert not any(orphan.exists() for orphan in orphans)
    assert (data / row.upload_key).is_file() and (data / row.processed_key).is_file()


@pytest.mark.parametrize(
    ("name", "expected"),
    [("C:\\Users\\me\\song.mp3", "song.mp3"), ("../../etc/passwd", "passwd"), ("a\x00b\nc.wav", "abc.wav"),
     ("", "upload"), ("x" * 300, "x" * 255)],
)  # fmt: skip
def test_client_file_names_are_metadata_only(name: str, expected: str) -> None:
    assert clean_filename(name) == expected


def test_health_says_loading_while_the_workers_load_the_models(model_cache: Path, tmp_path: Path) -> None:
    services = open_services(tiny_settings(model_cache, tmp_path / "data"), start_workers=False)
    try:
        with services.host._lock:  # hold the engine's construction: the workers wait in their warm-up
            services.workers.start()
            states = services.model_states()
            assert {s.role: s.state for s in states} == {"generation": "loading", "embedding": "loading"}
            assert services.host.built is None
        loaded = wait_until(lambda: all(s.state == "loaded" for s in services.model_states()), what="the models")
        assert loaded and all(services.workers.alive().values())
    finally:
        close_services(services)


def test_without_workers_health_reports_models_as_loading_on_first_use(model_cache: Path, tmp_path: Path) -> None:
    services = open_services(tiny_settings(model_cache, tmp_path / "data"), start_workers=False)
    try:
        assert {s.state for s in services.model_states()} == {"available"}
        _ = services.engine.embedder
        assert {s.role: s.state for s in services.model_states()}["embedding"] == "loaded"
    finally:
        close_services(services)


def test_the_app_answers_without_importing_torch_or_the_audio_stack() -> None:
    code = ("import sys; import motif.service.api.app, motif.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'scipy', 'av') if m in sys.modules))")  # fmt: skip
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]"  # they load in the workers' threads, after /api/health answers


def test_a_new_embedding_model_embeds_the_existing_uploads_after_a_restart(model_cache: Path, tmp_path: Path) -> None:
    from motif.engine.models import build_tiny_clap

    settings = tiny_settings(model_cache, tmp_path / "data")
    services = open_services(settings, start_workers=False)
    row = _upload(services, tmp_path)
    close_services(services)
    other = settings.model_copy(update={"embedding_model": str(build_tiny_clap(model_cache))})  # another model id
    services = open_services(other)
    try:
        found = wait_until(lambda: library.lookup_embedding(services, EVERYONE, row.id, False).embedding,
                           what="the backfill")
        assert found.model == other.embedding_model
    finally:
        close_services(services)
