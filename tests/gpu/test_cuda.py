"""The whole pipeline on a CUDA GPU: embed, every mode, stereo, long-form, batching, cancel, and the decoder in
fp16/bf16 against transformers in musicgen-small's shape. Skipped (with the reason) where there is no GPU.

Everything here checks what runs on CUDA by construction: one device decided by the Engine, every tensor on it,
a per-job torch.Generator on it, fp16 by default, and never the CPU's C kernels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from motif.config import Settings
from motif.engine import Engine, GenerationMode, GenerationParams
from motif.engine.decoder import StaticCacheDecoder
from motif.engine.pipeline import GenerationJob
from motif.engine.types import SAMPLE_RATE
from motif.errors import GenerationCancelled
from tests.engine.test_shapes import SHAPES, _decoder_model, _inputs, _reference
from tests.synth import music_like

CUDA = torch.device("cuda")


def _engine(model_cache: Path, **overrides: Any) -> Engine:
    base: dict[str, Any] = dict(generation_model="tiny", embedding_model="tiny", model_cache_dir=model_cache,
                                device="auto", allow_model_download=False, window_seconds=10.0,
                                extend_overlap_seconds=4.0, prompt_seconds=4.0)  # fmt: skip
    return Engine(Settings(_env_file=None, **{**base, **overrides}))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def engine(model_cache: Path) -> Engine:
    return _engine(model_cache)


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return music_like(12.0, SAMPLE_RATE, seed=3)


def test_auto_picks_the_gpu_in_fp16_and_never_the_cpu_kernels(engine: Engine) -> None:
    assert engine.device.type == "cuda"
    decoder = engine.generator.decoder
    assert decoder.precision == "fp16" and decoder.device.type == "cuda"
    assert decoder._kernel is None and decoder._fused is None
    assert all(t.device.type == "cuda" for t in decoder._k + decoder._v)
    assert engine.embedder.loaded.device.type == "cuda"


def test_every_mode_runs_and_a_seeded_job_repeats_on_the_gpu(engine: Engine, source: np.ndarray) -> None:
    params = GenerationParams(duration=5.0, seed=11)
    first, again = (engine.generate(source, SAMPLE_RATE, params) for _ in range(2))
    assert first.audio.shape == (5 * SAMPLE_RATE,) and np.isfinite(first.audio).all()
    assert np.array_equal(first.audio, again.audio)
    style = engine.generate(source, SAMPLE_RATE, GenerationParams(duration=5.0, seed=2, mode=GenerationMode.STYLE))
    assert style.description and style.similarity is not None
    loop = engine.generate(source, SAMPLE_RATE, GenerationParams(duration=6.0, seed=3, loop=True, bpm=120.0))
    assert loop.audio.shape == (6 * SAMPLE_RATE,)


def test_long_form_windows_on_the_gpu(engine: Engine, source: np.ndarray) -> None:
    result = engine.generate(source, SAMPLE_RATE, GenerationParams(duration=25.0, seed=5))  # 10 s windows
    assert result.audio.shape == (25 * SAMPLE_RATE,) and np.isfinite(result.audio).all()


@pytest.mark.parametrize("model_id", ["tiny-melody", "tiny-stereo", "tiny-stereo-melody"])
def test_melody_and_stereo_models_on_the_gpu(model_cache: Path, source: np.ndarray, model_id: str) -> None:
    result = _engine(model_cache, generation_model=model_id).generate(source, SAMPLE_RATE,
                                                                      GenerationParams(duration=5.0, seed=1))
    channels = 2 if "stereo" in model_id else 1
    assert result.audio.reshape(5 * SAMPLE_RATE, -1).shape[1] == channels


def test_batching_and_cancel_on_the_gpu(engine: Engine, source: np.ndarray) -> None:
    outcomes: dict[str, Any] = {}

    def job(key: str, seed: int, cancel: bool = False) -> GenerationJob:
        return GenerationJob(source, GenerationParams(duration=5.0, seed=seed), key=key,
                             on_done=lambda o: outcomes.__setitem__(key, o),
                             should_cancel=(lambda: True) if cancel else None)  # fmt: skip

    engine.run_batch([job("a", 1), job("b", 2), job("c", 3, cancel=True), job("d", 4)])
    assert isinstance(outcomes["c"], GenerationCancelled)
    assert all(outcomes[k].audio.shape == (5 * SAMPLE_RATE,) for k in "abd")


def test_embeddings_on_the_gpu_match_the_cpu(model_cache: Path, source: np.ndarray) -> None:
    gpu = _engine(model_cache, embedding_precision="fp32").embed_audio(source, SAMPLE_RATE)
    cpu = _engine(model_cache, device="cpu", embedding_precision="fp32").embed_audio(source, SAMPLE_RATE)
    assert float(np.dot(gpu, cpu)) > 0.9999


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_decoder_in_musicgen_small_shape_matches_transformers_on_the_gpu(dtype: torch.dtype) -> None:
    model, melody = _decoder_model(SHAPES["small"])
    tokens, memory, mask = _inputs(model, melody)
    reference = _reference(model, melody, tokens, memory, mask)[3:]
    model.decoder.to(CUDA, dtype)
    decoder = StaticCacheDecoder(model, melody, 512)
    assert decoder.cache_dtype == dtype and decoder._kernel is None
    decoder.reserve(1)
    out = [decoder.prefill(0, tokens[:, :4].to(CUDA), memory.to(CUDA), mask.to(CUDA))]
    for t in range(4, tokens.shape[1]):
        out.append(decoder.step(tokens[None, :, t].to(CUDA))[0])
    ours = torch.stack(out).cpu()
    err = float(((ours - reference).norm(dim=-1) / reference.norm(dim=-1)).max())
    assert err < (0.01 if dtype == torch.float16 else 0.05)


@pytest.mark.slow
def test_the_whole_pipeline_with_random_weights_in_musicgen_small_shape(model_cache: Path, source: np.ndarray) -> None:
    """All 24 layers of musicgen-small (587M parameters, random weights), batched, in fp16 on the GPU."""
    from motif.bench.builders import build_musicgen

    engine = _engine(model_cache, generation_model=str(build_musicgen(model_cache, "small")), window_seconds=30.0,
                     extend_overlap_seconds=10.0, prompt_seconds=10.0)  # fmt: skip
    outcomes: dict[str, Any] = {}
    jobs = [GenerationJob(source, GenerationParams(duration=5.0, seed=i), key=str(i),
                          on_done=lambda o, k=str(i): outcomes.__setitem__(k, o)) for i in range(4)]  # fmt: skip
    engine.run_batch(jobs)
    assert all(outcomes[str(i)].audio.shape == (5 * SAMPLE_RATE,) for i in range(4))
    assert engine.generator.decoder.precision == "fp16"
