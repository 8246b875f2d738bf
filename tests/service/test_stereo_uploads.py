"""Stereo through the service: a stereo upload keeps its channels, and each kind of model continues it."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from motif.audio import load_audio
from motif.service import library
from motif.service.ingest import ingest_upload
from motif.service.runtime import close_services, open_services
from motif.service.store import EVERYONE
from tests.service.conftest import tiny_settings, wait_until
from tests.synth import music_like, sine, write_format


def _stereo(seconds: float, sr: int) -> np.ndarray:
    """Different music on each side, so a downmix would be visible."""
    return np.stack([music_like(seconds, sr, seed=1), 0.5 * sine(330.0, seconds, sr)], axis=1)


def test_decoding_keeps_two_sides_and_folds_more_channels_into_them(tmp_path: Path) -> None:
    sr = 44_100
    stereo = write_format(tmp_path / "s.wav", _stereo(3.0, sr), sr, "wav16")
    decoded = load_audio(stereo, sample_rate=32_000, stereo=True)
    assert decoded.samples.shape == (96_000, 2)
    mono = load_audio(stereo, sample_rate=32_000)
    np.testing.assert_allclose(decoded.samples.mean(axis=1), mono.samples, atol=2e-3)
    right = load_audio(write_format(tmp_path / "r.wav", _stereo(3.0, sr)[:, 1], sr, "wav16"), sample_rate=32_000)
    np.testing.assert_allclose(decoded.samples[:, 1], right.samples, atol=2e-3)
    quad = np.concatenate([_stereo(3.0, sr), _stereo(3.0, sr)], axis=1)  # FL FR BL BR: L = FL+BL, R = FR+BR
    folded = load_audio(write_format(tmp_path / "q.wav", quad, sr, "wav16"), sample_rate=32_000, stereo=True)
    np.testing.assert_allclose(folded.samples, decoded.samples, atol=2e-3)
    lone = load_audio(write_format(tmp_path / "m.wav", sine(440.0, 3.0, sr), sr, "wav16"), stereo=True)
    assert lone.samples.ndim == 1  # a mono upload stays mono


@pytest.mark.parametrize("model", ["tiny-stereo", "tiny"])
def test_a_stereo_upload_is_stored_stereo_and_continued_by_a_stereo_or_mono_model(
    model: str, model_cache: Path, tmp_path: Path
) -> None:
    services = open_services(tiny_settings(model_cache, tmp_path / "data", generation_model=model))
    try:
        path = write_format(tmp_path / "song.flac", _stereo(8.0, 44_100), 44_100, "flac")
        with services.blobs.staging("uploads") as staged:
            shutil.copyfile(path, staged)
            row = ingest_upload(services, staged, "song.flac", path.stat().st_size)
        with services.blobs.open(row.processed_key) as file:
            assert np.load(io.BytesIO(file.read())).shape == (8 * 32_000, 2)
        assert row.channels == 2 and row.analysis["tempo_bpm"] is not None
        job = library.create_generation(services, EVERYONE, row.id, {"duration": 5.0, "seed": 3})
        assert job is not None
        done = wait_until(lambda: (j := services.queue.get(job.id)) is not None and j.status in
                          ("completed", "failed") and j, timeout=240, what="the generation")  # fmt: skip
        assert done.status == "completed", done.error
        with services.blobs.open(str(done.output_key)) as file:
            result = load_audio(io.BytesIO(file.read()), stereo=True)
        assert result.samples.shape == ((5 * 32_000, 2) if model == "tiny-stereo" else (5 * 32_000,))
    finally:
        close_services(services)
