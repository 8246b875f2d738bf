"""Offline random-weight test models of the real architectures: `tiny`, `tiny-melody`, `tiny-stereo`,
`tiny-stereo-melody` (MusicGen) and `tiny`, `tiny-fused` (CLAP). Their output is noise, by design.

Each is built once into a cache directory (atomically) and loaded like real weights by motif.engine.models.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import torch

TINY_GENERATION_IDS = {"tiny", "tiny-melody", "tiny-stereo", "tiny-stereo-melody"}
TINY_EMBEDDING_IDS = {"tiny", "tiny-fused"}
TINY_BUILD_VERSION = "3"  # bump when a tiny builder changes so caches rebuild

_WORDS = [
    "a", "an", "and", "the", "of", "with", "in", "on", "for", "to", "by", "music", "song", "track", "piece",
    "beat", "drum", "drums", "bass", "guitar", "piano", "synth", "strings", "violin", "cello", "brass",
    "trumpet", "sax", "saxophone", "flute", "organ", "pad", "vocal", "choir", "ambient", "electronic", "rock",
    "pop", "jazz", "blues", "classical", "hip", "hop", "house", "techno", "trance", "dubstep", "folk",
    "country", "funk", "soul", "reggae", "metal", "orchestral", "cinematic", "lofi", "chill", "calm", "happy",
    "sad", "dark", "bright", "energetic", "relaxing", "epic", "melancholic", "uplifting", "aggressive",
    "dreamy", "fast", "slow", "tempo", "bpm", "key", "major", "minor", "c", "d", "e", "f", "g", "a", "b",
    "sharp", "flat", "loud", "soft", "acoustic", "electric", "warm", "cold", "heavy", "light", "groove",
    "melody", "rhythm", "harmony", "chord", "chords", "solo", "loop",
]



_build_lock = threading.Lock()


def _build_once(target: Path, build: Any) -> Path:
    """Build into a temp dir and rename, so a crash or a concurrent builder never leaves half a model."""
    with _build_lock:
        if (target / "config.json").exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        return target


def _tiny_t5_tokenizer() -> Any:
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{word}", -5.0 - i * 0.01) for i, word in enumerate(dict.fromkeys(_WORDS))]
    vocab += [(ch, -10.0) for ch in "abcdefghijklmnopqrstuvwxyz0123456789"]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _tiny_roberta_tokenizer() -> Any:
    from transformers import RobertaTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789#":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(f"Ġ{ch}", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(_WORDS):  # whole-word merges so common words are one token
        piece = f"Ġ{word[0]}"
        for ch in word[1:]:
            merges.append((piece, ch))
            piece += ch
            vocab.setdefault(piece, len(vocab))
    unique_merges: list[tuple[str, str]] = list(dict.fromkeys(merges))
    return RobertaTokenizer(vocab=vocab, merges=unique_merges)  # type: ignore[arg-type]  # pairs: what BPE takes


def _tiny_musicgen_configs(vocab_size: int, n_channels: int = 1) -> dict[str, Any]:
    from transformers import EncodecConfig, T5Config

    text = T5Config(
        vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8
    )
    audio = EncodecConfig(
        sampling_rate=32_000, upsampling_ratios=[8, 5, 4, 4], codebook_size=2048, codebook_dim=16, hidden_size=16,
        num_filters=4, num_lstm_layers=1, target_bandwidths=[2.2], normalize=False, chunk_length_s=None,
        overlap=None, use_causal_conv=False, audio_channels=1,
    )  # fmt: skip
    decoder = dict(  # 16-wide heads: the CPU kernels' paths (fused int8 step, bf16 attention) run in every test
        vocab_size=2048, num_codebooks=4 * n_channels, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=4096, pad_token_id=2048, bos_token_id=2048,
        decoder_start_token_id=2048, dropout=0.0, audio_channels=n_channels,
    )  # fmt: skip  # stereo: 8 codebooks over the same mono EnCodec, as musicgen-stereo-* ship
    return {"text_encoder": text, "audio_encoder": audio, "decoder": decoder}


def randomize_codebooks(codec: Any) -> None:
    """EnCodec's codebooks start as zeros (they are learnt by k-means); random ones make codes audible."""
    with torch.no_grad():
        for layer in codec.quantizer.layers:
            book = layer.codebook
            book.embed.normal_()
            book.embed_avg.copy_(book.embed)
            book.cluster_size.fill_(1.0)


def _tiny_generation_config(model: Any) -> None:
    from transformers import GenerationConfig

    # MusicGen's shipped generation config, which a config built from parts does not get by itself.
    model.generation_config = GenerationConfig(
        do_sample=True, guidance_scale=3.0, top_k=250, max_length=1503, decoder_start_token_id=2048,
        pad_token_id=2048, bos_token_id=2048,
    )  # fmt: skip


def build_tiny_generator(cache_dir: Path, model_id: str = "tiny") -> Path:
    """Build (once) the directory of a tiny random MusicGen: `tiny`, `tiny-melody`, `tiny-stereo(-melody)`."""
    melody = model_id.endswith("melody")
    n_channels = 2 if "stereo" in model_id else 1
    target = Path(cache_dir) / f"{model_id}-musicgen-v{TINY_BUILD_VERSION}"

    def build(tmp: Path) -> None:
        from transformers import (
            MusicgenConfig,
            MusicgenDecoderConfig,
            MusicgenForConditionalGeneration,
            MusicgenMelodyConfig,
            MusicgenMelodyDecoderConfig,
            MusicgenMelodyForConditionalGeneration,
        )

        tokenizer = _tiny_t5_tokenizer()
        parts = _tiny_musicgen_configs(len(tokenizer), n_channels)
        with torch.random.fork_rng():
            torch.manual_seed(1234)
            if melody:
                parts["decoder"] = MusicgenMelodyDecoderConfig(**parts["decoder"])
                model: Any = MusicgenMelodyForConditionalGeneration(MusicgenMelodyConfig(**parts))
            else:
                parts["decoder"] = MusicgenDecoderConfig(**parts["decoder"])
                model = MusicgenForConditionalGeneration(MusicgenConfig(**parts))
            randomize_codebooks(model.audio_encoder)
        _tiny_generation_config(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _build_once(target, build)


def build_tiny_clap(cache_dir: Path, model_id: str = "tiny") -> Path:
    """Build (once) the directory of a tiny random CLAP with 512-d projections; `tiny-fused` is a fusion one.

    `tiny-fused` is laion/clap-htsat-fused's arrangement: `enable_fusion` in the model and the extractor's
    `truncation="fusion"` (HTK mel filters, four stacked mel channels, `is_longer`).
    """
    fused = model_id == "tiny-fused"
    name = "tiny-clap-fused" if fused else "tiny-clap"
    target = Path(cache_dir) / f"{name}-v{TINY_BUILD_VERSION}"

    def build(tmp: Path) -> None:
        from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

        tokenizer = _tiny_roberta_tokenizer()
        config = ClapConfig(
            text_config=dict(
                vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=80,
            ),
            audio_config=dict(hidden_size=64, patch_embeds_hidden_size=8, depths=[1, 1, 1, 1],
                              num_attention_heads=[1, 1, 2, 2], enable_fusion=fused),
            projection_dim=512,
        )  # fmt: skip
        with torch.random.fork_rng():
            torch.manual_seed(4321)
            model = ClapModel(config)
        model.save_pretrained(tmp)
        truncation = "fusion" if fused else "rand_trunc"
        ClapFeatureExtractor(truncation=truncation, padding="repeatpad").save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _build_once(target, build)
