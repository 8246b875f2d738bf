"""CLAP parity: each window Motif embeds gets exactly what the checkpoint's ClapFeatureExtractor + ClapModel give it.

For a 3 s track, an exact 10 s one and a 25 s one, the windows Motif cuts (10 s, then the remainder) are each
given alone to the stock extractor (the checkpoint's own `truncation` and `padding`) and the stock model; pooled
the same way, the vectors agree. Run for an unfused checkpoint (`rand_trunc`, Slaney mel) and a fusion one
(`fusion`, HTK mel stacked four times, `is_longer`), as laion/clap-htsat-unfused and -fused ship.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from motif.config import Settings
from motif.engine import Engine
from motif.engine.embedder import WINDOW_SAMPLES, Embedder, repeat_pad, split_windows
from motif.engine.models import load_embedder
from motif.engine.types import CLAP_SAMPLE_RATE


@pytest.fixture(scope="module", params=["tiny", "tiny-fused"])
def embedder(request: pytest.FixtureRequest, model_cache: Path) -> Embedder:
    return Embedder(load_embedder(request.param, torch.device("cpu"), torch.float32, model_cache, False))


def _music(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * CLAP_SAMPLE_RATE)) / CLAP_SAMPLE_RATE
    tones = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 2000, 5))
    return (0.05 * tones + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def _stock(embedder: Embedder, audio: np.ndarray) -> np.ndarray:
    """The stock pipeline on Motif's raw windows, one clip per call, pooled by real-audio fraction."""
    extractor, model = embedder.loaded.feature_extractor, embedder.loaded.model
    rows, weights = [], []
    for start in range(0, audio.size, WINDOW_SAMPLES):
        chunk = audio[start : start + WINDOW_SAMPLES]
        inputs = extractor(chunk, sampling_rate=CLAP_SAMPLE_RATE, return_tensors="pt")
        with torch.inference_mode():
            out = model.get_audio_features(input_features=inputs["input_features"].float(),
                                           is_longer=inputs["is_longer"]).pooler_output  # fmt: skip
        rows.append(out[0].double())
        weights.append(chunk.size / WINDOW_SAMPLES)
    pooled = (torch.stack(rows) * torch.tensor(weights, dtype=torch.float64)[:, None]).sum(0).numpy()
    return pooled / np.linalg.norm(pooled)


@pytest.mark.parametrize("seconds", [3.0, 10.0, 25.0])
def test_vectors_equal_the_stock_extractor_and_model_on_the_same_windows(embedder: Embedder, seconds: float) -> None:
    audio = _music(seconds, seed=int(seconds))
    ours = embedder.embed_audio(audio)
    np.testing.assert_allclose(ours, _stock(embedder, audio), atol=2e-4)


def test_repeatpad_tiles_whole_copies_then_zeros_as_the_extractor() -> None:
    chunk = np.arange(1, 4 * CLAP_SAMPLE_RATE + 1, dtype=np.float32)  # 4 s: two whole copies fit, then 2 s of zeros
    padded = repeat_pad(chunk, WINDOW_SAMPLES)
    assert np.array_equal(padded[: chunk.size], chunk) and np.array_equal(padded[chunk.size : 2 * chunk.size], chunk)
    assert not padded[2 * chunk.size :].any()
    windows, weights = split_windows(chunk)
    assert np.array_equal(windows[0], padded) and weights.tolist() == [0.4]


def test_the_embedding_identity_names_windowing_and_precision(model_cache: Path) -> None:
    def engine(precision: str) -> Engine:
        settings = Settings(_env_file=None, embedding_model="tiny", device="cpu", embedding_precision=precision,
                            model_cache_dir=model_cache)  # type: ignore[call-arg]  # fmt: skip
        return Engine(settings)

    fp32, bf16 = engine("fp32").pipeline_version, engine("bf16").pipeline_version
    assert fp32.endswith("fp32") and bf16.endswith("bf16") and fp32 != bf16  # never compared with each other
    assert len(fp32) <= 32  # the embeddings table's column
