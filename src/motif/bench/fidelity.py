"""Fast paths against float32 on the same weights: teacher-forced decoder logits and EnCodec SNR."""

from __future__ import annotations

import copy
from typing import Any

import torch

from motif.bench.machine import timed
from motif.engine import kernels, models
from motif.engine.codec import cast_codec_decoder, snr_db
from motif.engine.decoder import StaticCacheDecoder
from motif.engine.generator import MusicGenerator

PROMPT = "upbeat rock with piano and drums"


def teacher_forced_logits(decoder: StaticCacheDecoder, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CFG pair (cond, uncond) fed the same (steps, K) tokens -> (steps + 1, 2, K, vocab) float32 logits."""
    decoder.reserve(2)
    ok = torch.ones(states.shape[0], dtype=torch.bool)
    start = torch.full((tokens.shape[1], 1), 2048)
    uncond = torch.zeros_like(states)
    out = [torch.stack([decoder.prefill(0, start, states, ok), decoder.prefill(1, start, uncond, ok)])]
    for row in tokens:
        out.append(decoder.step(torch.stack([row, row])))
    return torch.stack(out)


def fidelity(loaded: models.LoadedGenerator, n_steps: int, precisions: list[str]) -> dict[str, dict[str, float]]:
    """Each precision's decoder against float32 on the same weights, teacher-forced on float32's own samples.

    loaded must hold the model in float32; it is not modified. Returns {precision: {rel_err, top1}}:
    the median over steps and rows of |logits - ref| / |ref|, and the share of (step, row, codebook)
    argmaxes that agree.
    """
    generator = MusicGenerator(loaded)
    states = generator._encode_text(PROMPT)
    reference_model = copy.deepcopy(loaded.model)
    ref_decoder = StaticCacheDecoder(reference_model, loaded.is_melody, n_steps + 8)
    tokens = _sample_tokens(ref_decoder, states, n_steps)
    ref_decoder = StaticCacheDecoder(reference_model, loaded.is_melody, n_steps + 8)
    reference = teacher_forced_logits(ref_decoder, states, tokens)
    del ref_decoder, reference_model
    report = {}
    for precision in precisions:
        decoder = _decoder_in(loaded.model, loaded.is_melody, precision, n_steps + 8)
        logits = teacher_forced_logits(decoder, states, tokens)
        rel = (logits - reference).norm(dim=-1) / reference.norm(dim=-1)
        top1 = (logits.argmax(-1) == reference.argmax(-1)).float().mean()
        report[precision] = {"rel_err": float(rel.median()), "top1": float(top1)}
    return report


def _sample_tokens(decoder: StaticCacheDecoder, states: torch.Tensor, n_steps: int) -> torch.Tensor:
    """n_steps CFG-3 samples (steps, K) from the float32 decoder, so teacher forcing follows its own path."""
    generator = torch.Generator().manual_seed(0)
    decoder.reserve(2)
    ok = torch.ones(states.shape[0], dtype=torch.bool)
    start = torch.full((decoder.n_codebooks, 1), 2048)
    uncond = torch.zeros_like(states)
    logits = torch.stack([decoder.prefill(0, start, states, ok), decoder.prefill(1, start, uncond, ok)])
    rows = []
    for _ in range(n_steps):
        guided = logits[1] + 3.0 * (logits[0] - logits[1])
        row = torch.multinomial(guided.softmax(-1), 1, generator=generator)[:, 0]
        rows.append(row)
        logits = decoder.step(torch.stack([row, row]))
    return torch.stack(rows)


def _decoder_in(model: Any, is_melody: bool, precision: str, max_len: int) -> StaticCacheDecoder:
    """precision: a GENERATION_PRECISION, or int8-avx2 (int8 on the AVX2 kernel library)."""
    if precision == "int8-avx2":
        kernels.select_cpu_path("avx2")
        try:
            return _decoder_in(model, is_melody, "int8", max_len)
        finally:
            kernels.select_cpu_path("auto")
    copied = copy.deepcopy(model)
    dtype = models.resolve_dtype(precision, torch.device("cpu"))
    copied.decoder.to(dtype)
    return StaticCacheDecoder(copied, is_melody, max_len, int8=precision == "int8")


def codec_snr(codec: Any, n_frames: int, dtype: torch.dtype) -> tuple[float, float, float]:
    """EnCodec decode of random codes: float32 vs dtype. Returns (snr_db, fp32 seconds, dtype seconds)."""
    codes = torch.randint(0, codec.config.codebook_size, (1, 1, codec.quantizer.get_num_quantizers_for_bandwidth(
        codec.config.target_bandwidths[0]), n_frames))  # fmt: skip
    fast = copy.deepcopy(codec)
    cast_codec_decoder(fast, dtype)
    with torch.inference_mode():
        codec.decode(codes, [None])
        fp32_s, reference = timed(lambda: codec.decode(codes, [None]).audio_values, 1)
        fast.decode(codes, [None])
        fast_s, audio = timed(lambda: fast.decode(codes, [None]).audio_values, 1)
    return snr_db(reference, audio), fp32_s, fast_s
