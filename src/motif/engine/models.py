"""Load models by Hugging Face id or local path, pick device and dtype, and build the offline `tiny` models.

The `tiny` ids build random-weight models of the real architectures (MusicGen, MusicGen-Melody, CLAP)
into a cache directory and then load them through the same `from_pretrained` path as real weights, so
the code under test is the code that runs in production. Their output is noise, by design.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from motif.engine.checkpoint import checkpoint_dtype, find_safetensors, own_weights
from motif.engine.kernels import load_kernel
from motif.errors import ModelUnavailableError

log = logging.getLogger(__name__)

TINY_GENERATION_IDS = {"tiny", "tiny-melody"}
TINY_EMBEDDING_IDS = {"tiny"}
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


@dataclass
class LoadedGenerator:
    """A MusicGen (or MusicGen-Melody) model with its tokenizer, on one device and dtype."""

    model: Any  # MusicgenForConditionalGeneration | MusicgenMelodyForConditionalGeneration
    tokenizer: Any
    model_id: str
    is_melody: bool
    device: torch.device
    dtype: torch.dtype


@dataclass
class LoadedEmbedder:
    """A CLAP model with its feature extractor and tokenizer."""

    model: Any  # ClapModel
    feature_extractor: Any
    tokenizer: Any
    model_id: str
    device: torch.device
    dtype: torch.dtype


def resolve_device(setting: str) -> torch.device:
    """cpu|cuda|auto -> a torch.device. Raises ModelUnavailableError for cuda without a GPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError("DEVICE=cuda but no CUDA device is visible to torch; use DEVICE=cpu or auto")
    return torch.device(setting)


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls run at full speed rather than being emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Precision setting -> the dtype weights are loaded in (int8 is quantised from a bf16 load)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.bfloat16}[
        precision
    ]


def resolve_generation_precision(precision: str, device: torch.device) -> str:
    """GENERATION_PRECISION -> the precision MusicGen's decoder runs in.

    `auto`: fp16 on CUDA; on CPU int8 where its kernel builds (AVX512-VNNI and gcc), since its logits error
    is bf16's at half the bytes per step (`motif bench` measures both); else bf16 where the CPU has it, else fp32.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    if load_kernel() is not None:
        return "int8"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def _hub_cache_dir() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return str(HF_HUB_CACHE)


def _unavailable(model_id: str, role: str, env: str, error: BaseException) -> ModelUnavailableError:
    where = model_id if Path(model_id).exists() else f"the Hugging Face cache ({_hub_cache_dir()})"
    return ModelUnavailableError(
        f"{role} model '{model_id}' could not be loaded from {where}: {type(error).__name__}: "
        f"{str(error).splitlines()[0] if str(error) else ''}. Fetch it on a machine with internet access "
        f"with `motif models pull` (or `hf download {model_id}`), copy the cache or a local directory "
        f"here and set {env} to it, or set {env}=tiny for a random-weight test model."
    )


def _from_pretrained(cls: Any, path: str, allow_download: bool, **kwargs: Any) -> Any:
    """Local files first (fast, offline-safe); the hub only if allowed and the local try failed."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard bars are noise in server logs
    try:
        return cls.from_pretrained(path, local_files_only=True, **kwargs)
    except OSError:
        if not allow_download or Path(path).exists():
            raise
    return cls.from_pretrained(path, **kwargs)


def _load_owned(cls: Any, path: str, allow_download: bool, dtype_for: Any) -> Any:
    """`from_pretrained` through its memory map untouched, then weights the model owns in their final dtypes.

    Loading in the checkpoint's own dtype makes every weight a view of the map (nothing read yet);
    `own_weights` then reads each once, so peak memory is one copy in the target dtypes (see checkpoint.py).
    """
    files = find_safetensors(path)
    model = _from_pretrained(cls, path, allow_download, dtype=(checkpoint_dtype(files) if files else None)
                             or torch.float32)  # fmt: skip
    own_weights(model, files or find_safetensors(path), dtype_for)  # found now if it was just downloaded
    return model


def is_locally_available(model_id: str, cache_dir: Path) -> bool:
    """True if loading needs no network: a tiny id, a local directory, or a cached hub snapshot."""
    if model_id in TINY_GENERATION_IDS | TINY_EMBEDDING_IDS or Path(model_id).is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model_id, "config.json")
    return isinstance(found, str)


def is_melody_model(model_id: str) -> bool | None:
    """Whether a generation model is MusicGen-Melody, from its config alone; None if that is not at hand."""
    if model_id in TINY_GENERATION_IDS:
        return model_id == "tiny-melody"
    config = Path(model_id) / "config.json"
    if not config.is_file():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_id, "config.json")
        if not isinstance(cached, str):
            return None
        config = Path(cached)
    import json

    try:
        return json.loads(config.read_text()).get("model_type") == "musicgen_melody"
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# Loading


def load_generator(
    model_id: str, device: torch.device, dtype: torch.dtype, cache_dir: Path, allow_download: bool,
    decoder_dtype: torch.dtype | None = None,
) -> LoadedGenerator:
    """Load a MusicGen-family model by id, local path, or `tiny`/`tiny-melody`.

    `dtype` is the text encoder's and EnCodec's; `decoder_dtype` (default `dtype`) the decoder's, where
    the time goes. Weights are read straight into their dtype: no float32 copy of a bf16 decoder is held.
    Raises ModelUnavailableError naming the model, where it looked and how to fetch it.
    """
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        MusicgenForConditionalGeneration,
        MusicgenMelodyForConditionalGeneration,
    )

    path = str(build_tiny_generator(cache_dir, model_id)) if model_id in TINY_GENERATION_IDS else model_id
    try:
        config = _from_pretrained(AutoConfig, path, allow_download)
        is_melody = config.model_type == "musicgen_melody"
        cls = MusicgenMelodyForConditionalGeneration if is_melody else MusicgenForConditionalGeneration
        if config.model_type not in ("musicgen", "musicgen_melody"):
            raise ModelUnavailableError(f"'{model_id}' is a {config.model_type} model, not MusicGen")
        decoder_dtype = decoder_dtype or dtype
        model = _load_owned(cls, path, allow_download, lambda name: decoder_dtype if name.startswith("decoder.")
                            else dtype)  # fmt: skip
        tokenizer = _from_pretrained(AutoTokenizer, path, allow_download)
    except ModelUnavailableError:
        raise
    except (OSError, ValueError) as error:
        raise _unavailable(model_id, "Generation", "GENERATION_MODEL", error) from error
    model.to(device).eval()
    if model_id in TINY_GENERATION_IDS:
        log.warning("GENERATION_MODEL=%s: random-weight test model, its output is noise", model_id)
    return LoadedGenerator(model, tokenizer, model_id, is_melody, device, decoder_dtype)


def load_embedder(
    model_id: str, device: torch.device, dtype: torch.dtype, cache_dir: Path, allow_download: bool
) -> LoadedEmbedder:
    """Load a CLAP model by id, local path, or `tiny`. Raises ModelUnavailableError."""
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

    path = str(build_tiny_clap(cache_dir)) if model_id in TINY_EMBEDDING_IDS else model_id
    try:
        model = _load_owned(ClapModel, path, allow_download, lambda _name: dtype)
        feature_extractor = _from_pretrained(ClapFeatureExtractor, path, allow_download)
        tokenizer = _from_pretrained(AutoTokenizer, path, allow_download)
    except (OSError, ValueError) as error:
        raise _unavailable(model_id, "Embedding", "EMBEDDING_MODEL", error) from error
    model.to(device).eval()
    if model_id in TINY_EMBEDDING_IDS:
        log.warning("EMBEDDING_MODEL=%s: random-weight test model, its vectors carry no meaning", model_id)
    return LoadedEmbedder(model, feature_extractor, tokenizer, model_id, device, dtype)


# --------------------------------------------------------------------------------------------------
# Tiny random-weight models of the real architectures


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


def _tiny_musicgen_configs(vocab_size: int) -> dict[str, Any]:
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
        vocab_size=2048, num_codebooks=4, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=4096, pad_token_id=2048, bos_token_id=2048, decoder_start_token_id=2048,
        dropout=0.0, audio_channels=1,
    )  # fmt: skip
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
    """Build (once) and return the directory of a tiny random MusicGen (`tiny`) or MusicGen-Melody."""
    melody = model_id == "tiny-melody"
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
        parts = _tiny_musicgen_configs(len(tokenizer))
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


def build_tiny_clap(cache_dir: Path) -> Path:
    """Build (once) and return the directory of a tiny random CLAP with 512-d projections."""
    target = Path(cache_dir) / f"tiny-clap-v{TINY_BUILD_VERSION}"

    def build(tmp: Path) -> None:
        from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

        tokenizer = _tiny_roberta_tokenizer()
        config = ClapConfig(
            text_config=dict(
                vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=80,
            ),
            audio_config=dict(hidden_size=64, patch_embeds_hidden_size=8, depths=[1, 1, 1, 1],
                              num_attention_heads=[1, 1, 2, 2]),
            projection_dim=512,
        )  # fmt: skip
        with torch.random.fork_rng():
            torch.manual_seed(4321)
            model = ClapModel(config)
        model.save_pretrained(tmp)
        ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad").save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _build_once(target, build)
