"""Load models by Hugging Face id or local path, pick device and dtype, and build the offline `tiny` models.

The `tiny` ids (motif.engine.tiny) build random-weight models of the real architectures into a cache directory,
then load through the same `from_pretrained` path as real weights, so the code under test is the code that
runs in production.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from motif.engine.checkpoint import checkpoint_dtype, find_safetensors, own_weights
from motif.engine.kernels import load_kernel
from motif.engine.tiny import TINY_EMBEDDING_IDS, TINY_GENERATION_IDS, build_tiny_clap, build_tiny_generator
from motif.errors import ModelUnavailableError

log = logging.getLogger(__name__)



@dataclass
class LoadedGenerator:
    """A MusicGen (or MusicGen-Melody) model with its tokenizer, on one device and dtype."""

    model: Any  # MusicgenForConditionalGeneration | MusicgenMelodyForConditionalGeneration
    tokenizer: Any
    model_id: str
    is_melody: bool
    device: torch.device
    dtype: torch.dtype
    n_channels: int = 1  # 2 for musicgen-stereo-*: 8 codebooks, left/right interleaved


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
    """cpu|cuda|auto -> the one device every model and tensor of an Engine lives on.

    `auto` takes CUDA only where a GPU is visible *and* runs a kernel (a GPU this torch build has no kernels
    for, or one that is out of memory, falls back to the CPU with a warning). Raises ModelUnavailableError for
    `cuda` without a usable GPU.
    """
    if setting == "cpu":
        return torch.device("cpu")
    reason = cuda_unusable_reason()
    if reason is None:
        return torch.device("cuda")
    if setting == "cuda":
        raise ModelUnavailableError(f"DEVICE=cuda but {reason}; use DEVICE=cpu or auto")
    if torch.cuda.is_available():
        log.warning("DEVICE=auto: %s; running on the CPU", reason)
    return torch.device("cpu")


def cuda_unusable_reason() -> str | None:
    """None when torch sees a CUDA GPU that runs a kernel; else why not, in words."""
    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch"
    try:
        (torch.ones(1, device="cuda") + 1).item()
    except RuntimeError as error:
        return f"the CUDA device cannot run torch's kernels ({str(error).splitlines()[0]})"
    return None


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on `device` (CUDA: the driver's count; CPU: MemAvailable); None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


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


def precision_name(dtype: torch.dtype) -> str:
    """torch dtype -> the precision's setting name (fp32, bf16, fp16)."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def resolve_generation_precision(precision: str, device: torch.device) -> str:
    """GENERATION_PRECISION -> the precision MusicGen's decoder runs in.

    `auto`: fp16 on CUDA; on CPU int8 where its kernel builds (AVX512-VNNI and gcc), since its logits error
    is bf16's at half the bytes per step (`motif bench` measures both); else bf16 where the CPU has it, else fp32.
    """
    if device.type == "cuda":  # the C kernels are CPU kernels: never selected here
        if precision == "int8":
            log.warning("GENERATION_PRECISION=int8 is CPU-only; running fp16 on %s", device)
        return "fp16" if precision in ("auto", "int8") else precision
    if precision != "auto":
        return precision
    if load_kernel() is not None:
        return "int8"
    return "bf16" if cpu_has_native_bf16() else "fp32"


# transformers' model construction is not thread-safe: `from_pretrained` sets process-wide state (the default
# dtype, empty-weight initialisation) while it builds a model, and its classes import lazily. Models are
# therefore built one at a time; their files are downloaded before, outside this lock (`_fetch`), so an
# embedding model never waits behind a MusicGen download.
construct_lock = threading.RLock()
_TRANSFORMERS_NAMES = (
    "AutoConfig", "AutoTokenizer", "MusicgenForConditionalGeneration", "MusicgenMelodyForConditionalGeneration",
    "ClapModel", "ClapFeatureExtractor", "T5Tokenizer", "T5TokenizerFast", "RobertaTokenizer",
    "RobertaTokenizerFast", "EncodecModel", "T5EncoderModel", "GenerationConfig",
)  # fmt: skip


def import_transformers() -> None:
    """Import every transformers class the loaders reach, once, under the construction lock.

    transformers imports its model modules lazily on first attribute access, and two threads doing that at
    once can see a half-initialised module: "cannot import name 'AutoTokenizer' from 'transformers'".
    """
    with construct_lock:
        import transformers

        for name in _TRANSFORMERS_NAMES:
            getattr(transformers, name, None)


_FETCH_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt"]  # config, weights, tokenizer, preprocessor


def _fetch(model_id: str, allow_download: bool) -> None:
    """Download a hub model's files into the Hugging Face cache (no lock held) when they are not there yet.

    Failures are left to the load that follows, which reports them with the fix.
    """
    if not allow_download or model_id in TINY_GENERATION_IDS | TINY_EMBEDDING_IDS or Path(model_id).exists():
        return
    if find_safetensors(model_id):
        return
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(model_id, allow_patterns=_FETCH_PATTERNS)
    except Exception as error:  # offline, unknown id, ...: the load reports it
        log.info("could not fetch %s ahead of loading it: %s", model_id, error)


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
        return model_id.endswith("melody")
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
    """Load a MusicGen-family model by id, local path, or a `tiny` id (motif.engine.tiny).

    `dtype` is the text encoder's and EnCodec's; `decoder_dtype` (default `dtype`) the decoder's, where
    the time goes. Weights are read straight into their dtype: no float32 copy of a bf16 decoder is held.
    Raises ModelUnavailableError naming the model, where it looked and how to fetch it.
    """
    _fetch(model_id, allow_download)
    with construct_lock:
        return _load_generator(model_id, device, dtype, cache_dir, allow_download, decoder_dtype)


def _load_generator(
    model_id: str, device: torch.device, dtype: torch.dtype, cache_dir: Path, allow_download: bool,
    decoder_dtype: torch.dtype | None,
) -> LoadedGenerator:
    import_transformers()
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
    n_channels = int(getattr(config.decoder, "audio_channels", 1))
    return LoadedGenerator(model, tokenizer, model_id, is_melody, device, decoder_dtype, n_channels)


def load_embedder(
    model_id: str, device: torch.device, dtype: torch.dtype, cache_dir: Path, allow_download: bool
) -> LoadedEmbedder:
    """Load a CLAP model by id, local path, or `tiny` / `tiny-fused`. Raises ModelUnavailableError."""
    _fetch(model_id, allow_download)
    with construct_lock:
        return _load_embedder(model_id, device, dtype, cache_dir, allow_download)


def _load_embedder(
    model_id: str, device: torch.device, dtype: torch.dtype, cache_dir: Path, allow_download: bool
) -> LoadedEmbedder:
    import_transformers()
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

    path = str(build_tiny_clap(cache_dir, model_id)) if model_id in TINY_EMBEDDING_IDS else model_id
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
