"""Motif's decoder in the real checkpoints' shapes, every precision, against transformers' forward on the same
random weights. Two layers instead of 24 or 48, so it fits a small machine: every per-layer shape (width,
heads, ffn, codebooks, cross-attention or melody prefix) is the checkpoint's; depth only repeats them.

Shapes (config.json of each facebook/musicgen-* checkpoint): small 1024 wide / 16 heads / ffn 4096; medium
1536 / 24 / 6144; large 2048 / 32 / 8192; melody = medium's with 12 chroma bins and a 235-long chroma prefix;
melody-large = large's; stereo = the same widths with 8 codebooks. Text memory comes from t5-base (768 wide)
through `enc_to_dec_proj`, checked end to end for small.
"""

from __future__ import annotations

import copy
import gc
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from motif.engine import kernels
from motif.engine.decoder import StaticCacheDecoder

N_LAYERS = 2
SHAPES: dict[str, dict[str, Any]] = {
    "small": dict(hidden_size=1024, num_attention_heads=16, ffn_dim=4096),
    "medium": dict(hidden_size=1536, num_attention_heads=24, ffn_dim=6144),
    "large": dict(hidden_size=2048, num_attention_heads=32, ffn_dim=8192),
    "stereo-small": dict(hidden_size=1024, num_attention_heads=16, ffn_dim=4096, num_codebooks=8, audio_channels=2),
    "stereo-large": dict(hidden_size=2048, num_attention_heads=32, ffn_dim=8192, num_codebooks=8, audio_channels=2),
    "melody": dict(hidden_size=1536, num_attention_heads=24, ffn_dim=6144, melody=True),
    "melody-large": dict(hidden_size=2048, num_attention_heads=32, ffn_dim=8192, melody=True),
    "stereo-melody": dict(hidden_size=1536, num_attention_heads=24, ffn_dim=6144, num_codebooks=8, audio_channels=2,
                          melody=True),
}  # fmt: skip
CHROMA_LENGTH = 235
KERNEL = kernels.load_kernel() is not None
# (precision, max relative logits error, min top-1 agreement) against fp32 transformers
# Top-1 agreement on random weights counts near-ties: fp16 at 0.1% error flips 3-4% of them (0.964 seen on
# the small shape, where the error bound holds with 8x room), so its floor sits at 0.95.
PRECISIONS = [("fp32", 1e-4, 1.0), ("bf16", 0.05, 0.9), ("fp16", 0.01, 0.95), ("int8", 0.08, 0.85)]


def _decoder_model(shape: dict[str, Any]) -> tuple[Any, bool]:
    """A random MusicGen(-Melody) decoder LM in `shape` with N_LAYERS layers, as a `.decoder` holder."""
    from transformers import (
        MusicgenDecoderConfig,
        MusicgenForCausalLM,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyForCausalLM,
    )

    shape = dict(shape)
    melody = shape.pop("melody", False)
    shape.setdefault("num_codebooks", 4)
    common = dict(vocab_size=2048, num_hidden_layers=N_LAYERS, max_position_embeddings=2048, pad_token_id=2048,
                  bos_token_id=2048, decoder_start_token_id=2048, dropout=0.0, **shape)  # fmt: skip
    torch.manual_seed(0)
    if melody:
        lm: Any = MusicgenMelodyForCausalLM(MusicgenMelodyDecoderConfig(**common))
    else:
        lm = MusicgenForCausalLM(MusicgenDecoderConfig(**common))
    return SimpleNamespace(decoder=lm.eval()), melody


def _inputs(model: Any, melody: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    config = model.decoder.config
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 2048, (config.num_codebooks, 10), generator=generator)
    n_memory = CHROMA_LENGTH + 12 if melody else 12  # melody: chroma prefix then text
    memory = torch.randn(n_memory, config.hidden_size, generator=generator)
    mask = torch.ones(n_memory, dtype=torch.bool)
    mask[-3:] = False  # padded text
    return tokens, memory, mask


def _reference(model: Any, melody: bool, tokens: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> Any:
    """transformers' forward -> (T, K, vocab) float32."""
    with torch.inference_mode():
        if melody:  # the prefix is read by self-attention, its padding masked as keys
            out = model.decoder(input_ids=tokens, encoder_hidden_states=memory[None],
                                encoder_attention_mask=mask[None].long(),
                                attention_mask=torch.ones(1, tokens.shape[1], dtype=torch.long))  # fmt: skip
            logits = out.logits[:, -tokens.shape[1] :]
        else:
            out = model.decoder(input_ids=tokens, encoder_hidden_states=(memory * mask[:, None])[None],
                                encoder_attention_mask=mask[None].long())  # fmt: skip
            logits = out.logits
    return logits.transpose(0, 1).float()


def _ours(model: Any, melody: bool, precision: str, tokens: torch.Tensor, memory: torch.Tensor,
          mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    copied = copy.deepcopy(model)
    if precision in ("bf16", "fp16"):
        copied.decoder.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    decoder = StaticCacheDecoder(copied, melody, 512, int8=precision == "int8")
    decoder.reserve(1)
    out = [decoder.prefill(0, tokens[:, :4], memory, mask)]
    for t in range(4, tokens.shape[1]):
        out.append(decoder.step(tokens[None, :, t])[0])
    return torch.stack(out)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SHAPES))
def test_the_decoder_matches_transformers_in_the_real_shapes_in_every_precision(name: str) -> None:
    model, melody = _decoder_model(SHAPES[name])
    tokens, memory, mask = _inputs(model, melody)
    reference = _reference(model, melody, tokens, memory, mask)[3:]
    for precision, max_err, min_agree in PRECISIONS:
        if precision == "int8" and not KERNEL:
            continue  # int8 stays bf16 without its kernel (a warning says so)
        ours = _ours(model, melody, precision, tokens, memory, mask)
        err = float(((ours - reference).norm(dim=-1) / reference.norm(dim=-1)).max())
        agree = float((ours.argmax(-1) == reference.argmax(-1)).float().mean())
        assert err < max_err and agree >= min_agree, f"{name} {precision}: rel err {err:.4f}, top-1 {agree:.3f}"
        gc.collect()


@pytest.mark.slow
def test_t5_base_memory_through_enc_to_dec_proj_matches_transformers_for_musicgen_small_shape() -> None:
    """The conditional model end to end: t5-base (768) text states projected to 1024 and read by cross-attention."""
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    text = T5Config(vocab_size=256, d_model=768, d_kv=64, d_ff=3072, num_layers=N_LAYERS, num_heads=12)
    audio = EncodecConfig(sampling_rate=32_000, upsampling_ratios=[8, 5, 4, 4], codebook_size=2048, codebook_dim=16,
                          hidden_size=16, num_filters=4, num_lstm_layers=1, audio_channels=1)  # fmt: skip
    decoder = MusicgenDecoderConfig(vocab_size=2048, num_hidden_layers=N_LAYERS, pad_token_id=2048,
                                    bos_token_id=2048, decoder_start_token_id=2048, **SHAPES["small"])  # fmt: skip
    torch.manual_seed(2)
    model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=text, audio_encoder=audio,
                                                            decoder=decoder)).eval()  # fmt: skip
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(3))
    tokens = torch.randint(0, 2048, (4, 8), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        reference = model(input_ids=ids, decoder_input_ids=tokens).logits.transpose(0, 1).float()
        states = model.enc_to_dec_proj(model.text_encoder(input_ids=ids).last_hidden_state[0])
    assert model.text_encoder.config.hidden_size == 768 and states.shape == (9, 1024)
    ours = _ours(model, False, "fp32", tokens, states, torch.ones(9, dtype=torch.bool))
    torch.testing.assert_close(ours, reference[3:], rtol=1e-4, atol=1e-4)


def test_bench_shapes_are_the_checkpoints_and_the_tests_use_their_per_layer_shapes() -> None:
    from motif.bench.builders import SHAPES as BENCH_SHAPES
    from motif.bench.builders import decoder_shape

    assert decoder_shape("medium") == ({"hidden_size": 1536, "num_hidden_layers": 48, "num_attention_heads": 24,
                                        "ffn_dim": 6144, "num_codebooks": 4, "audio_channels": 1}, False)  # fmt: skip
    stereo_melody, melody = decoder_shape("stereo-melody-large")
    assert melody and stereo_melody["num_codebooks"] == 8 and stereo_melody["hidden_size"] == 2048
    for name, shape in SHAPES.items():  # this file's 2-layer shapes are the bench's, layer for layer
        bench, bench_melody = decoder_shape(name if name in BENCH_SHAPES else name.replace("stereo-small", "small"))
        per_layer = {k: v for k, v in shape.items() if k not in ("melody", "num_codebooks", "audio_channels")}
        assert per_layer.items() <= bench.items() and bench_melody == shape.get("melody", False), name
    with pytest.raises(ValueError, match="unknown shape"):
        decoder_shape("huge")
