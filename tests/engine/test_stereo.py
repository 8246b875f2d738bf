"""Stereo MusicGen (8 codebooks, left/right interleaved) token for token against transformers' own `generate`.

`tiny-stereo` has musicgen-stereo-*'s layout: a mono EnCodec with 4 codebooks per channel, and a decoder with
`audio_channels=2` and 8 codebooks where codebooks 2k and 2k + 1 (left and right) share delay k. Greedy
decoding, and seeded sampling (one job: its generator draws as transformers' global one does), must give the
very tokens transformers' `generate` gives on the same weights, and so the same audio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from motif.engine import kernels
from motif.engine.generator import DecodeTask, MusicGenerator
from motif.engine.models import LoadedGenerator, load_generator
from motif.engine.patterns import codebook_delays, delay_pattern, undelay
from motif.engine.types import SAMPLE_RATE, GenerationParams

CPU = torch.device("cpu")
TEXT = "calm piano"
needs_kernel = pytest.mark.skipif(kernels.load_kernel() is None, reason="no AVX512-VNNI CPU or no gcc")


@pytest.fixture(scope="module")
def stereo(model_cache: Path) -> LoadedGenerator:
    return load_generator("tiny-stereo", CPU, torch.float32, model_cache, allow_download=False)


@pytest.fixture(scope="module")
def mono(model_cache: Path) -> LoadedGenerator:
    return load_generator("tiny", CPU, torch.float32, model_cache, allow_download=False)


def _stereo_source(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    left, right = 0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t + 1.0)
    return np.stack([left, right], axis=1).astype(np.float32)


def _ours(loaded: LoadedGenerator, params: GenerationParams, n_frames: int, **task: Any) -> tuple[torch.Tensor, Any]:
    """Run one task; returns (all frames: prompt then generated, (K, n)) and the rendered audio."""
    generator = MusicGenerator(loaded)
    seen: dict[str, Any] = {}
    render = generator._render

    def keep_frames(state: Any) -> np.ndarray:
        seen["frames"] = state.frames.clone()
        return render(state)

    generator._render = keep_frames  # type: ignore[method-assign]
    generator.run([DecodeTask(key="x", text=TEXT, params=params, seed=params.seed or 0, n_frames=n_frames,
                              on_done=lambda outcome: seen.__setitem__("audio", outcome), **task)])  # fmt: skip
    return seen["frames"], seen["audio"]


def _transformers(loaded: LoadedGenerator, params: GenerationParams, n_frames: int, **inputs: Any) -> tuple:
    """transformers' generate on the same weights -> (codes (K, n) as it decoded them, audio (channels, samples))."""
    model, calls = loaded.model, []
    decode = model.audio_encoder.decode

    def spy(audio_codes: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append(audio_codes[0, 0].clone())
        return decode(audio_codes, *args, **kwargs)

    model.audio_encoder.decode = spy
    n_delayed = max(codebook_delays(model.decoder.config.num_codebooks, loaded.n_channels))
    sample = params.top_k != 1
    try:
        torch.manual_seed(params.seed or 0)  # transformers samples from the global generator
        with torch.inference_mode():
            audio = model.generate(**loaded.tokenizer([TEXT], return_tensors="pt"), **inputs, do_sample=sample,
                                   guidance_scale=params.cfg_coef, top_k=params.top_k if sample else None,
                                   max_new_tokens=n_frames + n_delayed)  # fmt: skip
    finally:
        del model.audio_encoder.decode  # the instance attribute shadowed the method
    codes = calls[0] if len(calls) == 1 else torch.stack(calls, dim=1).reshape(-1, calls[0].shape[1])
    return codes, audio[0]


def test_stereo_delays_pair_left_and_right_codebooks_as_transformers_lays_them_out(stereo: LoadedGenerator) -> None:
    delays = codebook_delays(8, 2)
    assert delays == [0, 0, 1, 1, 2, 2, 3, 3]
    prompt = torch.arange(8 * 3).reshape(8, 3)
    window = delay_pattern(prompt, n_frames=5, delays=delays)
    ids = torch.cat([torch.full((8, 1), 2048), prompt], dim=1)  # transformers' decoder input starts with BOS
    _, mask = stereo.model.decoder.build_delay_pattern_mask(ids, pad_token_id=2048, max_length=window.seq.shape[1])
    # transformers' mask holds the prompt and the pads where it knows them, and -1 where it will predict
    assert torch.equal(mask != -1, window.known)
    assert torch.equal(torch.where(window.known, window.seq, -1), mask)
    assert torch.equal(undelay(window.seq, 5, delays)[:, :3], prompt)


@pytest.mark.parametrize("model_id", ["tiny", "tiny-stereo"])
def test_greedy_tokens_and_audio_equal_transformers_generate(model_id: str, stereo: LoadedGenerator,
                                                             mono: LoadedGenerator) -> None:  # fmt: skip
    loaded = stereo if model_id == "tiny-stereo" else mono
    params = GenerationParams(duration=0.8, top_k=1, cfg_coef=3.0, seed=1)
    frames, audio = _ours(loaded, params, 40)
    codes, reference = _transformers(loaded, params, 40)
    assert frames.shape == (4 * loaded.n_channels, 40)
    assert torch.equal(frames, codes)
    expected = reference.numpy().T if loaded.n_channels == 2 else reference[0].numpy()
    assert audio.shape == expected.shape
    np.testing.assert_allclose(audio, expected, atol=1e-5)


def test_seeded_sampling_draws_the_tokens_transformers_draws(stereo: LoadedGenerator) -> None:
    params = GenerationParams(duration=0.8, top_k=50, temperature=1.0, cfg_coef=3.0, seed=7)
    frames, _ = _ours(stereo, params, 40)
    codes, _ = _transformers(stereo, params, 40)
    assert torch.equal(frames, codes)
    other, _ = _ours(stereo, GenerationParams(duration=0.8, top_k=50, seed=8), 40)
    assert not torch.equal(frames, other)


def test_stereo_continuation_encodes_each_channel_and_continues_as_transformers(stereo: LoadedGenerator) -> None:
    source = _stereo_source(1.0)
    params = GenerationParams(duration=0.6, top_k=1, cfg_coef=3.0, seed=2)
    frames, audio = _ours(stereo, params, 30, prompt_audio=source)
    values = torch.from_numpy(source.T.copy())[None]  # (1, channels, samples)
    codes, _ = _transformers(stereo, params, 30, input_values=values)
    assert torch.equal(frames, codes)  # transformers returns the prompt's codes, then the new ones
    assert audio.shape == (30 * 640, 2)
    left = stereo.model.audio_encoder.encode(values[:, :1]).audio_codes[0, 0]
    assert torch.equal(frames[0::2, :50], left)  # the left channel's own codes, interleaved


def test_a_mono_upload_continues_on_a_stereo_model_and_a_stereo_upload_on_a_mono_one(
    stereo: LoadedGenerator, mono: LoadedGenerator
) -> None:
    source = _stereo_source(1.0)
    params = GenerationParams(duration=0.5, seed=3)
    frames, audio = _ours(stereo, params, 25, prompt_audio=source.mean(axis=1))
    assert audio.shape == (25 * 640, 2) and np.isfinite(audio).all()
    assert torch.equal(frames[0::2, :50], frames[1::2, :50])  # one mono encoding, duplicated as transformers does
    frames, audio = _ours(mono, params, 25, prompt_audio=source)
    assert audio.shape == (25 * 640,) and frames.shape[0] == 4
    downmix = torch.from_numpy(source.mean(axis=1))[None, None]
    assert torch.equal(frames[:, :50], mono.model.audio_encoder.encode(downmix).audio_codes[0, 0])


def test_stereo_melody_model_renders_two_channels(model_cache: Path) -> None:
    loaded = load_generator("tiny-stereo-melody", CPU, torch.float32, model_cache, allow_download=False)
    assert loaded.is_melody and loaded.n_channels == 2
    _, audio = _ours(loaded, GenerationParams(duration=0.5, seed=4), 25, melody_audio=_stereo_source(3.0))
    assert audio.shape == (25 * 640, 2) and np.isfinite(audio).all()


@needs_kernel
def test_fused_int8_step_batches_eight_codebooks_with_each_row_on_its_own(model_cache: Path) -> None:
    loaded = load_generator("tiny-stereo", CPU, torch.float32, model_cache, allow_download=False)
    generator = MusicGenerator(loaded, max_batch=3, int8=True)
    assert generator.decoder._fused is not None
    outcomes: dict[str, Any] = {}

    def task(key: str, seed: int, n_frames: int) -> DecodeTask:
        return DecodeTask(key=key, text=TEXT, params=GenerationParams(seed=seed), seed=seed, n_frames=n_frames,
                          on_done=lambda o: outcomes.__setitem__(key, o))  # fmt: skip

    generator.run([task("alone", 5, 30)])
    generator.run([task("other", 6, 45), task("again", 5, 30), task("third", 9, 20)])
    assert outcomes["alone"].shape == (30 * 640, 2)
    assert np.array_equal(outcomes["alone"], outcomes["again"])
