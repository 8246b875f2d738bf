"""Random-weight models in the real architectures' shapes, built once into MODEL_CACHE_DIR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from motif.engine import tiny
from motif.engine.types import SAMPLE_RATE

BENCH_BUILD_VERSION = "1"
EMBEDDING_MODEL_DIR = f"bench-clap-htsat-unfused-v{BENCH_BUILD_VERSION}"

# The decoder shapes of facebook/musicgen-* (their config.json): width, layers, heads, ffn; melody checkpoints
# add 12 chroma bins and a 235-long chroma prefix; stereo ones have 8 codebooks over the same mono EnCodec.
DECODER_SHAPES: dict[str, dict[str, Any]] = {
    "small": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096),
    "medium": dict(hidden_size=1536, num_hidden_layers=48, num_attention_heads=24, ffn_dim=6144),
    "large": dict(hidden_size=2048, num_hidden_layers=48, num_attention_heads=32, ffn_dim=8192),
}
SHAPES = [*DECODER_SHAPES, "melody", "melody-large", "stereo-small", "stereo-medium", "stereo-large",
          "stereo-melody", "stereo-melody-large"]  # fmt: skip


def decoder_shape(shape: str) -> tuple[dict[str, Any], bool]:
    """A --shape name -> (MusicgenDecoderConfig keywords, is_melody). Raises ValueError for an unknown name."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    stereo, melody = shape.startswith("stereo-"), "melody" in shape
    size = shape.removeprefix("stereo-").replace("melody-large", "large").replace("melody", "medium")
    kwargs = dict(DECODER_SHAPES[size], num_codebooks=8 if stereo else 4, audio_channels=2 if stereo else 1)
    return kwargs, melody


def generation_model_dir(shape: str) -> str:
    return f"bench-musicgen-{shape}-v{BENCH_BUILD_VERSION}"


GENERATION_MODEL_DIR = generation_model_dir("small")


def build_musicgen_small(cache_dir: Path) -> Path:
    """Random musicgen-small (587M parameters) in the real architecture, built once under cache_dir."""
    return build_musicgen(cache_dir, "small")


def build_musicgen(cache_dir: Path, shape: str = "small") -> Path:
    """Random MusicGen in a real checkpoint's architecture (`SHAPES`), t5-base text encoder, EnCodec 32 kHz."""
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyForConditionalGeneration,
        T5Config,
    )

    shape_kwargs, melody = decoder_shape(shape)

    def build(tmp: Path) -> None:
        text = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
        audio = EncodecConfig(
            sampling_rate=SAMPLE_RATE, upsampling_ratios=[8, 5, 4, 4], codebook_size=2048, codebook_dim=128,
            hidden_size=128, num_filters=64, num_lstm_layers=2, target_bandwidths=[2.2], normalize=False,
            chunk_length_s=None, overlap=None, use_causal_conv=False, audio_channels=1,
        )  # fmt: skip
        common = dict(vocab_size=2048, max_position_embeddings=2048, pad_token_id=2048, bos_token_id=2048,
                      decoder_start_token_id=2048, **shape_kwargs)  # fmt: skip
        with torch.random.fork_rng():
            torch.manual_seed(0)
            if melody:
                config = MusicgenMelodyConfig(text_encoder=text, audio_encoder=audio, num_chroma=12, chroma_length=235,
                                              decoder=MusicgenMelodyDecoderConfig(**common))  # fmt: skip
                model: Any = MusicgenMelodyForConditionalGeneration(config)
            else:
                decoder = MusicgenDecoderConfig(**common)
                model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=text, audio_encoder=audio,
                                                                        decoder=decoder))  # fmt: skip
            tiny.randomize_codebooks(model.audio_encoder)
        tiny._tiny_generation_config(model)
        model.save_pretrained(tmp)
        tiny._tiny_t5_tokenizer().save_pretrained(tmp)

    return tiny._build_once(Path(cache_dir) / generation_model_dir(shape), build)


def build_clap_htsat_unfused(cache_dir: Path) -> Path:
    """Random CLAP-HTSAT-unfused (`ClapConfig()` defaults, 154M parameters), built once under cache_dir."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    def build(tmp: Path) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = ClapModel(ClapConfig(projection_dim=512))
        model.save_pretrained(tmp)
        ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad").save_pretrained(tmp)
        tiny._tiny_roberta_tokenizer().save_pretrained(tmp)

    return tiny._build_once(Path(cache_dir) / EMBEDDING_MODEL_DIR, build)
