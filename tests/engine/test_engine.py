"""The Engine facade end to end on tiny models: modes, similarity, progress, seeds, errors, batching."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from motif.config import Settings
from motif.engine import Engine, GenerationMode, GenerationParams
from motif.engine.kernels import load_kernel
from motif.engine.models import cpu_has_native_bf16
from motif.engine.pipeline import GenerationJob
from motif.engine.types import SAMPLE_RATE
from motif.errors import GenerationCancelled, InvalidRequestError
from tests.synth import music_like


def _settings(model_cache: Path, **overrides: object) -> Settings:
    base: dict[str, object] = dict(generation_model="tiny", embedding_model="tiny", model_cache_dir=model_cache,
                                   device="cpu", allow_model_download=False)  # fmt: skip
    return Settings(_env_file=None, **{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def engine(model_cache: Path) -> Engine:
    return Engine(_settings(model_cache))


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return music_like(12.0, SAMPLE_RATE, seed=3)


def test_continuation_returns_the_requested_seconds_with_similarity_and_progress(
    engine: Engine, source: np.ndarray
) -> None:
    seen: list[float] = []
    result = engine.generate(source, SAMPLE_RATE, GenerationParams(duration=5.0, seed=1), progress=seen.append)
    assert result.audio.shape == (5 * SAMPLE_RATE,) and result.audio.dtype == np.float32
    assert result.sample_rate == SAMPLE_RATE and result.mode is GenerationMode.CONTINUATION
    assert result.similarity is not None and -1.0 <= result.similarity <= 1.0
    assert seen == sorted(seen) and seen[-1] == 100.0 and len(seen) > 10
    assert np.isfinite(result.audio).all() and np.abs(result.audio).max() <= 10 ** (-1 / 20) + 1e-3


def test_seeded_generation_repeats_exactly(engine: Engine, source: np.ndarray) -> None:
    params = GenerationParams(duration=5.0, seed=42, temperature=0.8, top_k=100, top_p=0.9, cfg_coef=4.0)
    first = engine.generate(source, SAMPLE_RATE, params)
    second = engine.generate(source, SAMPLE_RATE, params)
    assert first.seed == 42 and np.array_equal(first.audio, second.audio)
    unseeded = engine.generate(source, SAMPLE_RATE, GenerationParams(duration=5.0))
    assert isinstance(unseeded.seed, int)  # a random seed is chosen and reported, so it can be replayed


def test_style_mode_captions_the_source_and_conditions_on_that_text(engine: Engine, source: np.ndarray) -> None:
    result = engine.generate(source, SAMPLE_RATE, GenerationParams(duration=5.0, seed=2, mode=GenerationMode.STYLE))
    assert result.mode is GenerationMode.STYLE
    assert result.description and "music with" in result.description and "BPM" in result.description
    prompted = engine.generate(
        source, SAMPLE_RATE, GenerationParams(duration=5.0, seed=2, mode=GenerationMode.STYLE, prompt="with horns")
    )
    assert prompted.description == result.description  # the caption; the user's words are added to the condition
    assert not np.array_equal(prompted.audio, result.audio)


def test_melody_mode_needs_a_melody_model(engine: Engine, source: np.ndarray, model_cache: Path) -> None:
    with pytest.raises(InvalidRequestError, match="MusicGen-Melody"):
        Engine(_settings(model_cache)).check_mode(GenerationMode.MELODY)  # known from the id, nothing loaded
    with pytest.raises(InvalidRequestError, match="MusicGen-Melody"):
        engine.generate(source, SAMPLE_RATE, GenerationParams(duration=5.0, mode=GenerationMode.MELODY))
    melody = Engine(_settings(model_cache, generation_model="tiny-melody"))
    melody.check_mode(GenerationMode.MELODY)
    result = melody.generate(source, SAMPLE_RATE, GenerationParams(duration=5.0, seed=3))
    assert result.mode is GenerationMode.MELODY and result.audio.shape == (5 * SAMPLE_RATE,)


def test_run_batch_delivers_every_job_and_cancels_only_the_cancelled(engine: Engine, source: np.ndarray) -> None:
    outcomes: dict[str, object] = {}
    done = threading.Event()

    def job(key: str, duration: float, cancel: bool = False) -> GenerationJob:
        def deliver(outcome: object) -> None:
            outcomes[key] = outcome
            if len(outcomes) == 3:
                done.set()

        return GenerationJob(source, GenerationParams(duration=duration, seed=5), key=key, on_done=deliver,
                             should_cancel=(lambda: True) if cancel else None)  # fmt: skip

    engine.run_batch([job("a", 5.0), job("b", 6.0, cancel=True)], take_more=lambda n: [])
    engine.run_batch([job("c", 5.0)])
    assert done.is_set()
    assert isinstance(outcomes["b"], GenerationCancelled)
    assert outcomes["a"].audio.shape == (5 * SAMPLE_RATE,)  # type: ignore[attr-defined]
    assert outcomes["c"].audio.shape == (5 * SAMPLE_RATE,)  # type: ignore[attr-defined]


def test_a_missing_generation_model_fails_the_job_with_the_reason(model_cache: Path, source: np.ndarray) -> None:
    engine = Engine(_settings(model_cache, generation_model="facebook/musicgen-small"))
    outcomes: list[object] = []
    engine.run_batch([GenerationJob(source, GenerationParams(duration=5.0), on_done=outcomes.append)])
    assert "facebook/musicgen-small" in str(outcomes[0]) and "motif models pull" in str(outcomes[0])


def test_embed_audio_resamples_and_is_deterministic(engine: Engine, source: np.ndarray) -> None:
    at_32k = engine.embed_audio(source, SAMPLE_RATE)
    assert at_32k.shape == (512,) and abs(float(np.linalg.norm(at_32k)) - 1) < 1e-5
    assert np.array_equal(at_32k, engine.embed_audio(source, SAMPLE_RATE))


def test_a_bf16_engine_holds_no_float32_decoder_weights(model_cache: Path) -> None:
    engine = Engine(_settings(model_cache, generation_precision="bf16"))
    model = engine.generator.loaded.model
    assert engine.generator.loaded.dtype is torch.bfloat16
    assert {t.dtype for t in model.decoder.state_dict().values() if t.is_floating_point()} == {torch.bfloat16}
    assert {p.dtype for p in model.text_encoder.parameters()} == {torch.float32}  # T5 stays float32


def test_auto_precision_runs_the_fused_int8_step_where_the_kernel_builds(engine: Engine) -> None:
    decoder = engine.generator.decoder
    if load_kernel() is None:
        assert decoder.precision in {"bf16", "fp32"}
        return
    assert decoder.precision == "int8" and decoder._fused is not None  # what real models run here, too
    float_weights = [t for t in engine.generator.loaded.model.decoder.model.decoder.layers.state_dict().values()
                     if t.is_floating_point() and t.dim() == 2 and t.numel() > 0]  # fmt: skip
    assert not float_weights  # the bf16 projections were released once quantised


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="bf16 EnCodec decode is used only on CPUs with native bf16")
def test_reduced_precision_decodes_audio_in_bf16_but_encodes_prompts_in_float32(model_cache: Path) -> None:
    codec = Engine(_settings(model_cache, generation_precision="bf16")).generator.loaded.model.audio_encoder
    assert {p.dtype for p in codec.decoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in codec.encoder.parameters()} == {torch.float32}  # prompt tokens do not change
    codes = torch.randint(0, codec.config.codebook_size, (1, 1, 4, 50))
    with torch.inference_mode():
        assert codec.decode(codes, [None]).audio_values.dtype is torch.float32
