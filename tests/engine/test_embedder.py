"""CLAP embeddings: windows, determinism, norms, text space, captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from motif.engine.embedder import WINDOW_SAMPLES, Embedder, split_windows
from motif.engine.models import load_embedder
from motif.engine.types import CLAP_SAMPLE_RATE


@pytest.fixture(scope="module")
def embedder(model_cache: Path) -> Embedder:
    return Embedder(load_embedder("tiny", torch.device("cpu"), torch.float32, model_cache, allow_download=False))


def _noise(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * CLAP_SAMPLE_RATE)) * 0.1).astype(np.float32)


def test_split_windows_cuts_consecutive_10s_windows_and_repeat_pads_the_last() -> None:
    audio = _noise(25.0, 0)
    windows, weights = split_windows(audio)
    assert windows.shape == (3, WINDOW_SAMPLES)
    assert weights.tolist() == [1.0, 1.0, 0.5]
    assert np.array_equal(windows[1], audio[WINDOW_SAMPLES : 2 * WINDOW_SAMPLES])
    tail = audio[2 * WINDOW_SAMPLES :]
    assert np.array_equal(windows[2, : tail.size], tail) and np.array_equal(windows[2, tail.size :], tail)


def test_split_windows_refuses_empty_audio() -> None:
    with pytest.raises(ValueError):
        split_windows(np.zeros(0, dtype=np.float32))


def test_features_are_the_stock_extractors_for_each_window(embedder: Embedder) -> None:
    """The embedder's torch features stand in for CLAP's extractor on our exact-10 s windows (1e-3 dB)."""
    windows, _ = split_windows(_noise(15.0, 5))
    stock = embedder.loaded.feature_extractor(
        list(windows), sampling_rate=CLAP_SAMPLE_RATE, return_tensors="pt", truncation="rand_trunc",
        padding="repeatpad",
    )["input_features"]  # fmt: skip
    torch.testing.assert_close(embedder.features(windows), stock.float(), rtol=1e-4, atol=1e-3)


def test_embedding_matches_the_stock_extractor_path(embedder: Embedder) -> None:
    """Same weights, features from the stock extractor instead: the vector barely moves."""
    audio = _noise(23.0, 6)
    windows, weights = split_windows(audio)
    stock = embedder.loaded.feature_extractor(
        list(windows), sampling_rate=CLAP_SAMPLE_RATE, return_tensors="pt", truncation="rand_trunc",
        padding="repeatpad",
    )["input_features"]  # fmt: skip
    with torch.inference_mode():
        rows = embedder.loaded.model.get_audio_features(input_features=stock).pooler_output.double()
    reference = (rows * torch.from_numpy(weights)[:, None]).sum(0).numpy()
    reference /= np.linalg.norm(reference)
    assert np.abs(embedder.embed_audio(audio) - reference).max() < 1e-5


def test_embedding_is_512_unit_float32_and_identical_run_to_run(embedder: Embedder) -> None:
    audio = _noise(23.0, 1)
    first = embedder.embed_audio(audio)
    np.random.seed(99)  # CLAP's stock extractor draws its crop from numpy's global RNG: we must not care
    torch.manual_seed(99)
    second = embedder.embed_audio(audio)
    assert first.shape == (512,) and first.dtype == np.float32
    assert abs(float(np.linalg.norm(first)) - 1.0) < 1e-5
    assert np.array_equal(first, second)


def test_every_part_of_a_long_track_counts(embedder: Embedder) -> None:
    """A random 10 s crop would ignore most of the track; consecutive windows see all of it."""
    base = _noise(30.0, 2)
    changed_end = base.copy()
    changed_end[-WINDOW_SAMPLES:] = _noise(10.0, 3)
    assert not np.allclose(embedder.embed_audio(base), embedder.embed_audio(changed_end))


def test_text_vectors_share_the_space_and_are_unit(embedder: Embedder) -> None:
    texts = ["calm piano", "aggressive metal drums"]
    vectors = embedder.embed_text(texts)
    assert vectors.shape == (2, 512)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors, embedder.embed_text(texts))
    assert embedder.embed_text([]).shape == (0, 512)


def test_caption_names_genre_instruments_mood_tempo_and_key(embedder: Embedder) -> None:
    caption = embedder.caption(embedder.embed_audio(_noise(5.0, 4)), tempo_bpm=121.6, key="A minor")
    assert caption.text.endswith(", 122 BPM, in A minor")
    assert len(caption.tags["instrument"]) == 2
    assert all(word in caption.text for group in caption.tags.values() for word in group)
