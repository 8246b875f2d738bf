"""Random-weight models in the real architectures' shapes, built once into MODEL_CACHE_DIR."""

from __future__ import annotations

from pathlib import Path

import torch

from motif.engine import tiny
from motif.engine.types import SAMPLE_RATE

BENCH_BUILD_VERSION = "1"
GENERATION_MODEL_DIR = f"bench-musicgen-small-v{BENCH_BUILD_VERSION}"
EMBEDDING_MODEL_DIR = f"bench-clap-htsat-unfused-v{BENCH_BUILD_VERSION}"


def build_musicgen_small(cache_dir: Path) -> Path:
    """Random musicgen-small (587M parameters) in the real architecture, built once under cache_dir."""
    from transformers import (
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    def build(tmp: Path) -> None:
        text = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)
        audio = EncodecConfig(
            sampling_rate=SAMPLE_RATE, upsampling_ratios=[8, 5, 4, 4], codebook_size=2048, codebook_dim=128,
            hidden_size=128, num_filters=64, num_lstm_layers=2, target_bandwidths=[2.2], normalize=False,
            chunk_length_s=None, overlap=None, use_causal_conv=False, audio_channels=1,
        )  # fmt: skip
        decoder = MusicgenDecoderConfig(
            vocab_size=2048, num_codebooks=4, hidden_size=1024, ffn_dim=4096, num_hidden_layers=24,
            num_attention_heads=16, max_position_embeddings=2048, pad_token_id=2048, bos_token_id=2048,
            decoder_start_token_id=2048, audio_channels=1,
        )  # type: ignore[call-arg]  # fmt: skip
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=text, audio_encoder=audio,
                                                                    decoder=decoder))  # fmt: skip
            tiny.randomize_codebooks(model.audio_encoder)
        tiny._tiny_generation_config(model)
        model.save_pretrained(tmp)
        tiny._tiny_t5_tokenizer().save_pretrained(tmp)

    return tiny._build_once(Path(cache_dir) / GENERATION_MODEL_DIR, build)


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
