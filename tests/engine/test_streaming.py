"""Audio while it is generated: the chunks tile the result and match the final render within a bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from motif.engine.generator import DecodeTask, MusicGenerator
from motif.engine.models import LoadedGenerator, load_generator
from motif.engine.streaming import FIRST_CHUNK_FRAMES, HOP
from motif.engine.types import FRAMES_PER_SECOND, SAMPLE_RATE, GenerationParams

# Later chunks start EnCodec's LSTM from zeros one second before them, where the final render carries it
# through. Measured on the tiny codec: 144 dB of SNR against the final render, 1.2e-7 at most per sample
# (float32 rounding). The bounds leave room for other codecs; `motif bench` reports musicgen-small's.
MIN_SNR_DB = 60.0
MAX_ABS_DIFF = 1e-4


@pytest.fixture(scope="module")
def loaded(model_cache: Path) -> LoadedGenerator:
    return load_generator("tiny", torch.device("cpu"), torch.float32, model_cache, allow_download=False)


def _source(seconds: float = 4.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _run(loaded: LoadedGenerator, duration: float, wanted: bool = True, window: int = 1500, overlap: int = 500):
    chunks: list[tuple[int, np.ndarray]] = []
    outcome: list[object] = []
    steps: list[int] = []

    def on_audio(samples: np.ndarray, offset: int) -> None:
        chunks.append((offset, samples.copy()))
        steps.append(len(outcome))

    task = DecodeTask(key="s", text="calm", params=GenerationParams(duration=duration, seed=3), seed=3,
                      n_frames=round(duration * FRAMES_PER_SECOND), prompt_audio=_source(), on_done=outcome.append,
                      on_audio=on_audio, wants_audio=lambda: wanted)  # fmt: skip
    MusicGenerator(loaded, window_frames=window, overlap_frames=overlap).run([task])
    assert isinstance(outcome[0], np.ndarray), outcome
    return chunks, outcome[0]


def _snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - other) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(reference.astype(np.float64) ** 2)) / noise)


@pytest.mark.parametrize("window", [1500, 200])  # one window, and long-form windows continuing each other
def test_chunks_tile_the_result_and_match_the_final_render(loaded: LoadedGenerator, window: int) -> None:
    chunks, final = _run(loaded, duration=6.0, window=window, overlap=100)
    offsets = [offset for offset, _ in chunks]
    assert offsets[0] == 0 and len(chunks) > 3  # several chunks came before the end
    assert chunks[0][1].shape[0] == FIRST_CHUNK_FRAMES * HOP
    for (offset, samples), (following, _) in zip(chunks, chunks[1:], strict=False):
        assert offset + samples.shape[0] == following  # no gap, no overlap
    streamed = np.concatenate([samples for _, samples in chunks])
    assert streamed.shape == final.shape
    first = chunks[0][1]
    np.testing.assert_allclose(first, final[: first.shape[0]], atol=1e-5)  # same start as the final render
    tail = chunks[-1]
    np.testing.assert_array_equal(tail[1], final[tail[0] :])  # the last piece is cut from the final render
    assert _snr_db(final, streamed) > MIN_SNR_DB
    assert np.abs(final - streamed).max() < MAX_ABS_DIFF


def test_nothing_is_rendered_while_nobody_listens(loaded: LoadedGenerator) -> None:
    chunks, _ = _run(loaded, duration=5.0, wanted=False)
    assert chunks == []


def test_stereo_chunks_have_both_channels_and_match(model_cache: Path) -> None:
    stereo = load_generator("tiny-stereo", torch.device("cpu"), torch.float32, model_cache, allow_download=False)
    chunks, final = _run(stereo, duration=5.0)
    assert final.ndim == 2 and final.shape[1] == 2
    streamed = np.concatenate([samples for _, samples in chunks])
    assert streamed.shape == final.shape and len(chunks) > 2
    assert np.abs(final - streamed).max() < MAX_ABS_DIFF
