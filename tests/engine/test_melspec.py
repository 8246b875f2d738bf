"""Torch log-mel features against CLAP's own feature extractor, on the tiny CLAP's preprocessor config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from motif.engine.melspec import LogMel
from motif.engine.models import build_tiny_clap
from motif.engine.types import CLAP_SAMPLE_RATE

WINDOW = 10 * CLAP_SAMPLE_RATE


@pytest.fixture(scope="module")
def extractor(model_cache: Path):
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor.from_pretrained(build_tiny_clap(model_cache))


def _windows(rng: np.random.Generator) -> np.ndarray:
    """Three 10 s windows: a chord with an envelope plus noise, near-silence with a click, loud noise."""
    t = np.arange(WINDOW) / CLAP_SAMPLE_RATE
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
    quiet = np.zeros(WINDOW)
    quiet[WINDOW // 2] = 0.5  # the -100 dB floor, and one frame far above it
    return np.stack([0.1 * chord + 0.01 * rng.standard_normal(WINDOW), quiet, rng.standard_normal(WINDOW)]).astype(
        np.float32
    )


def _stock(extractor, windows: np.ndarray) -> torch.Tensor:
    return extractor(
        list(windows), sampling_rate=CLAP_SAMPLE_RATE, return_tensors="pt", truncation="rand_trunc",
        padding="repeatpad",
    )["input_features"]  # fmt: skip


def test_torch_log_mel_equals_the_extractor_within_1e_3_db(extractor, rng: np.random.Generator) -> None:
    """The extractor works in float64, we in float32: features (in dB, -100..+19 here) agree to 1e-3 dB
    absolute plus 1e-4 relative; over the whole batch the relative error is far smaller."""
    windows = _windows(rng)
    ours, stock = LogMel(extractor)(windows), _stock(extractor, windows)
    assert ours.shape == stock.shape == (3, 1, 1001, 64) and ours.dtype == torch.float32
    assert stock.min() == -100.0  # the floor is exercised
    torch.testing.assert_close(ours, stock.float(), rtol=1e-4, atol=1e-3)
    assert float(torch.linalg.norm(ours - stock) / torch.linalg.norm(stock)) < 1e-5


def test_log_mel_follows_the_extractors_config(extractor, rng: np.random.Generator) -> None:
    """A different hop and band edge must change our features exactly as they change the extractor's."""
    from transformers import ClapFeatureExtractor

    other = ClapFeatureExtractor(hop_length=320, frequency_max=8000, truncation="rand_trunc", padding="repeatpad")
    windows = _windows(rng)[:1]
    ours, stock = LogMel(other)(windows), _stock(other, windows)
    assert ours.shape == stock.shape == (1, 1, 1501, 64)
    torch.testing.assert_close(ours, stock.float(), rtol=1e-4, atol=1e-3)
    assert LogMel(other).n_frames() == 1501


def test_log_mel_refuses_windows_that_the_extractor_would_crop_or_pad(extractor) -> None:
    log_mel = LogMel(extractor)
    with pytest.raises(ValueError):
        log_mel(np.zeros((1, WINDOW - 1), dtype=np.float32))
    with pytest.raises(ValueError):
        log_mel(np.zeros(WINDOW, dtype=np.float32))
